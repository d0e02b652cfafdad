"""Dialogue corpora as they come: file sources (compressed or not), layouts, readers (text normalisation is `chitchat.tokens.normalize`)."""
