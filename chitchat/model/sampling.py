"""How replies are sampled, as plain data: the settings every surface shares and `save_model` writes
into `generation_config.json`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from chitchat.errors import ChitchatError
from chitchat.options import option


# Temperatures below this mean greedy decoding (the most likely token), as 0 does in OpenAI's format:
# dividing float32 logits by a smaller number overflows them to inf, and the softmax to NaN (garbage
# replies), while at 1e-4 a logit gap of 0.01 is already a factor of e^100: greedy but for near-ties.
GREEDY_BELOW = 1e-4


@dataclass
class SamplingConfig:
    """How candidates are sampled. 0 disables top_k, top_p and no_repeat_ngram_size."""

    # defaults chosen by a `chitchat eval` sweep on CPED valid (models/default/SAMPLING_SWEEP.md)
    temperature: float = option(0.7, metavar="T", help="sampling temperature (below 1e-4: greedy)")
    top_k: int = option(8, flag="--topk", aliases=("--top-k",), metavar="K",
                        help="sample among the K most likely tokens (0: no limit)")
    top_p: float = option(0.0, flag="--topp", aliases=("--top-p",), metavar="P",
                          help="nucleus sampling: the fewest tokens holding probability P (0: off)")
    repetition_penalty: float = option(1.0, metavar="R",
                                       help="divide the probability weight of tokens already in the reply by R (1: off)")
    no_repeat_ngram_size: int = option(3, metavar="N", help="never repeat an N-gram within a reply (0: off)")
    min_len: int = option(1, metavar="N", help="tokens a reply has at least")
    # about the 90th percentile of reply lengths in the fine-tuning corpora (models/default/RANKING_SWEEP.md)
    max_len: int = option(40, metavar="N", help="tokens a reply has at most")
    candidates: int = option(5, metavar="N",
                             help="replies sampled per turn, then ranked (--ranking)")

    def validate(self) -> "SamplingConfig":
        problems = []
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            problems.append(f"temperature {self.temperature} must be > 0")
        if self.top_k < 0:
            problems.append(f"top_k {self.top_k} must be >= 0")
        if not 0 <= self.top_p <= 1:
            problems.append(f"top_p {self.top_p} must be in [0, 1]")
        if not (self.repetition_penalty >= 1 and math.isfinite(self.repetition_penalty)):
            problems.append(f"repetition_penalty {self.repetition_penalty} must be >= 1")
        if self.no_repeat_ngram_size < 0:
            problems.append(f"no_repeat_ngram_size {self.no_repeat_ngram_size} must be >= 0")
        if self.max_len < 1:
            problems.append(f"max_len {self.max_len} must be >= 1")
        if not 0 <= self.min_len <= self.max_len:
            problems.append(f"min_len {self.min_len} must be in [0, max_len={self.max_len}]")
        if self.candidates < 1:
            problems.append(f"candidates {self.candidates} must be >= 1")
        if problems:
            raise ChitchatError("; ".join(problems))
        return self
