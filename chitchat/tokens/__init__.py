"""Text to token ids: text normalisation, the character vocabulary and tokenizer, dialogue windows, the memmapped dataset, `preprocess`."""
