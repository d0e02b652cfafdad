"""The recipe that builds the shipped default model from open corpora: its stage runner and manifest
(`recipe.py`), the corpora it reads (`corpora.py`), the model card (`card.py`)."""
