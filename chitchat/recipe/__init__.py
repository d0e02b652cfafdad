"""The recipe that builds the shipped default model from open corpora, its manifest and model card."""
