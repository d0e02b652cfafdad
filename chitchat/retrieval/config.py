"""What a response index is built with: which pairs it keeps, how text becomes features, the weights."""

from __future__ import annotations

from dataclasses import dataclass

from chitchat.errors import ChitchatError
from chitchat.options import option


@dataclass
class IndexConfig:
    # which (context, reply) pairs are kept
    max_history: int = option(3, metavar="N", help="context utterances a pair keeps and a query reads: "
                              "the last one and N-1 earlier turns")
    max_reply_chars: int = option(50, metavar="N", help="pairs with a longer reply are left out "
                                  "(chitchat replies are short; counselling monologues are not)")
    max_context_chars: int = option(50, metavar="N", help="pairs whose last context utterance is longer are "
                                    "left out; earlier turns are cut to their last N characters")
    holdout_every: int = option(0, metavar="N", help="hold out one dialogue in N (chosen by a hash of its text, "
                                "so the same whatever the order of the corpora) and write them to "
                                "holdout.jsonl in the output directory (0: none)")
    # how an utterance becomes features
    words: bool = option(True, help="jieba words as features")
    char_ngrams: list[int] = option(help="lengths of the character n-grams used as features (none: no n-grams)",
                                    metavar="N", default_factory=lambda: [2])
    min_df: int = option(1, metavar="N", help="features seen in fewer pairs are dropped")
    max_df: float = option(0.05, metavar="F", help="features in more than this share of pairs' last utterances "
                           "(or of their earlier turns) are dropped: they say little and cost the most to look up")
    # the score: cosine(last utterances) + history_weight * cosine(earlier turns)
    history_weight: float = option(0.3, metavar="W", help="weight of the earlier turns against the last utterance "
                                   "(stored as the index's default; a query may give another)")

    def check(self) -> None:
        """One-line errors for settings that cannot build an index."""
        if self.max_history < 1:
            raise ChitchatError(f"--max-history {self.max_history} must be at least 1")
        if self.max_reply_chars < 1 or self.max_context_chars < 1:
            raise ChitchatError("--max-reply-chars and --max-context-chars must be at least 1")
        if self.holdout_every < 0:
            raise ChitchatError(f"--holdout-every {self.holdout_every} must be 0 (none) or more")
        if not self.words and not self.char_ngrams:
            raise ChitchatError("no features: give --words or --char-ngrams N")
        if any(n < 1 for n in self.char_ngrams):
            raise ChitchatError(f"--char-ngrams {self.char_ngrams}: lengths must be at least 1")
        if not 0 < self.max_df <= 1:
            raise ChitchatError(f"--max-df {self.max_df} must be in (0, 1]")
        if self.history_weight < 0:
            raise ChitchatError(f"--history-weight {self.history_weight} must be 0 or more")
