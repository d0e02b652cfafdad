"""The model as a Hugging Face artifact: GPT-2 presets, loading and saving, generation settings, the default model."""
