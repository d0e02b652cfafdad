"""Sampling options shared by `chitchat chat`, `chitchat eval` and `chitchat serve`."""

from __future__ import annotations

from typing import Callable

from chitchat.engine.engine import Engine
from chitchat.model.default import ensure_default_model
from chitchat.model.sampling import SamplingConfig

_DEFAULTS = SamplingConfig()

# /set NAME in the chat REPL and the command-line spelling, for each SamplingConfig field
OPTION_NAMES = {
    "temperature": "temperature",
    "top_k": "topk",
    "top_p": "topp",
    "repetition_penalty": "repetition-penalty",
    "no_repeat_ngram_size": "no-repeat-ngram-size",
    "min_len": "min-len",
    "max_len": "max-len",
    "candidates": "candidates",
}


def add_sampling_arguments(p) -> None:
    d = _DEFAULTS
    g = p.add_argument_group("sampling")
    g.add_argument("--topk", "--top-k", dest="top_k", type=int, default=d.top_k, metavar="K",
                   help="sample among the K most likely tokens (0: no limit)")
    g.add_argument("--topp", "--top-p", dest="top_p", type=float, default=d.top_p, metavar="P",
                   help="nucleus sampling: the fewest tokens holding probability P (0: off)")
    g.add_argument("--temperature", type=float, default=d.temperature, metavar="T", help="sampling temperature")
    g.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty, metavar="R",
                   help="divide the probability weight of tokens already in the reply by R (1: off)")
    g.add_argument("--no-repeat-ngram-size", type=int, default=d.no_repeat_ngram_size, metavar="N",
                   help="never repeat an N-gram within a reply (0: off)")
    g.add_argument("--min-len", type=int, default=d.min_len, metavar="N", help="tokens a reply has at least")
    g.add_argument("--max-len", type=int, default=d.max_len, metavar="N", help="tokens a reply has at most")
    g.add_argument("--candidates", type=int, default=d.candidates, metavar="N",
                   help="replies sampled per turn, then ranked (by MMI when there is an MMI model)")


def sampling_from_args(args) -> SamplingConfig:
    return SamplingConfig(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
        min_len=args.min_len, max_len=args.max_len, candidates=args.candidates,
    ).validate()


def load_engine(args, say: Callable[[str], None]):
    model, mmi = args.model, None if args.no_mmi else args.mmi_model
    if model is None:
        model, default_mmi = ensure_default_model(say=say)
        if not args.no_mmi and mmi is None:
            mmi = default_mmi
    return Engine.load(model, mmi, int8=args.int8, device=args.device, threads=args.threads)
