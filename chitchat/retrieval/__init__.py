"""Retrieved reply candidates: (context, reply) pairs read from corpora, a sparse TF-IDF index over
their contexts (jieba words and character n-grams, the last utterance weighted above the earlier
turns), saved as plain files beside a model and queried in milliseconds (`chitchat index` builds one)."""

from chitchat.retrieval.config import IndexConfig
from chitchat.retrieval.index import Hit, ResponseIndex, tokenizer_identity
from chitchat.retrieval.pairs import Pair, PairStats, read_pairs

__all__ = ["IndexConfig", "Hit", "ResponseIndex", "tokenizer_identity", "Pair", "PairStats", "read_pairs"]
