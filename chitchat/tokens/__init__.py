"""Text to token ids: the character vocabulary and tokenizer, dialogue windows, the memmapped dataset, `preprocess`."""
