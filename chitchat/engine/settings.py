"""A reply's settings, declared once: how candidates are sampled, how many each source gives, how they
are ranked, how much history the model sees, the seed.

Each field of `ReplySettings` carries its default, its range, its help and the other names it goes by
(`setting()`). Everything else is made from these declarations: the command-line flags (through
`chitchat.options.add_options`), the chat's `/set` names and help, the HTTP schemas' fields and the
ranges their documents state, eval's options, and a model's `generation_config.json`
(`generation_config`). `validate` is the one check every surface calls, so the same bad value gets the
same message from the CLI, `/set` and the HTTP APIs. The settings travel whole to the engine.

MMI on or off is a ranking (`mmi` or `likelihood`), not a flag of its own.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, fields, replace

from chitchat.engine.ranking import DEFAULT_RANKING, SYNTAX, parse_ranking
from chitchat.errors import ChitchatError
from chitchat.options import option

# Temperatures below this mean greedy decoding (the most likely token), as 0 does in OpenAI's format:
# dividing float32 logits by a smaller number overflows them to inf, and the softmax to NaN (garbage
# replies), while at 1e-4 a logit gap of 0.01 is already a factor of e^100: greedy but for near-ties.
GREEDY_BELOW = 1e-4
SEED_RANGE = (-(2**53), 2**53)  # integers JSON carries exactly everywhere
_RANGE = "chitchat.range"


class SettingError(ChitchatError):
    """Settings out of range: the message names each, `names` lists them (the HTTP API's `param`)."""

    def __init__(self, message: str, names: list[str]):
        super().__init__(message)
        self.names = names


def setting(default, *, help: str, low=None, high=None, names: tuple[str, ...] = (), **kw):
    """A field of `ReplySettings`: `option()` (its flag, help, aliases) plus its range [low, high]
    (None: unbounded on that side) and `names`, the other spellings `/set` accepts."""
    f = option(default, help=help, **kw)
    return dataclasses.field(default=default, metadata={**f.metadata, _RANGE: {"low": low, "high": high,
                                                                               "names": tuple(names)}})


@dataclass(frozen=True)
class ReplySettings:
    """How one reply is made. Counts of 0 switch a source or a control off."""

    # sampling; defaults chosen by a `chitchat eval` sweep on CPED valid (models/default/SAMPLING_SWEEP.md)
    temperature: float = setting(0.7, low=0.0, high=100.0, names=("temp",), metavar="T",
                                 help="sampling temperature (0, or below 1e-4: greedy)")
    top_k: int = setting(8, low=0, high=100_000, names=("topk",), aliases=("--topk",), metavar="K",
                         help="sample among the K most likely tokens (0: no limit)")
    top_p: float = setting(0.0, low=0.0, high=1.0, names=("topp",), aliases=("--topp",), metavar="P",
                           help="nucleus sampling: the fewest tokens holding probability P (0: off)")
    repetition_penalty: float = setting(1.0, low=1.0, metavar="R",
                                        help="divide the probability weight of tokens already in the reply by R (1: off)")
    no_repeat_ngram_size: int = setting(3, low=0, high=100, names=("no_repeat_ngram",), metavar="N",
                                        help="never repeat an N-gram within a reply (0: off)")
    min_len: int = setting(1, low=0, high=1024, metavar="N", help="tokens a reply has at least (at most max_len)")
    # about the 90th percentile of reply lengths in the fine-tuning corpora (models/default/RANKING_SWEEP.md)
    max_len: int = setting(40, low=1, high=1024, metavar="N", help="tokens a reply has at most")
    # candidates per source
    candidates: int = setting(5, low=0, high=256, names=("sampled",), metavar="N",
                              help="replies sampled per turn, then ranked with the other sources' (--ranking)")
    retrieved: int = setting(1, low=0, high=256, metavar="N",
                             help="replies retrieved per turn from the model's response index (0: none; "
                                  "without an index: none)")
    # ranking and context
    ranking: str = setting(DEFAULT_RANKING, names=("rank",), metavar="SPEC",
                           help=f"how candidates are ranked, lower is better: {SYNTAX} (a term whose model is "
                                "missing is left out; likelihood: MMI off)")
    max_history_len: int = setting(3, low=1, high=1000, names=("max_history",), metavar="N",
                                   help="utterances of dialogue the model sees, the new one included")
    seed: int | None = setting(None, low=SEED_RANGE[0], high=SEED_RANGE[1], metavar="N",
                               help="seed: the same seed and inputs give the same replies (none: random)")

    def validate(self) -> "ReplySettings":
        """These settings, the ranking written canonically; a ChitchatError naming every value out of
        its range."""
        bad = {f.name: p for f in fields(self) if (p := _out_of_range(f, getattr(self, f.name)))}
        if not bad and self.min_len > self.max_len:
            bad["min_len"] = f"min_len {self.min_len} must be at most max_len {self.max_len}"
        if not bad and self.total_candidates() < 1:
            bad["candidates"] = "no candidates: candidates (sampled) and the other sources' counts are all 0"
        if bad:
            raise SettingError("; ".join(bad.values()), list(bad))
        return replace(self, ranking=str(parse_ranking(self.ranking)))

    def total_candidates(self) -> int:
        return sum(getattr(self, name) for name in COUNT_FIELDS)

    def updated(self, **changes) -> "ReplySettings":
        """These settings with `changes` (None values ignored), validated."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None}).validate()

    def with_text(self, name: str, text: str) -> "ReplySettings":
        """These settings with one field given as text (`/set NAME VALUE`), validated. Lowering
        max_len below min_len lowers min_len with it."""
        key = setting_name(name)
        value = _parse(key, text.strip())
        extra = {"min_len": value} if key == "max_len" and isinstance(value, int) and value < self.min_len else {}
        return replace(self, **{key: value, **extra}).validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


COUNT_FIELDS = ("candidates", "retrieved")  # the fields that say how many candidates a source gives (sources.py)
_HINTS = typing.get_type_hints(ReplySettings)


def _meta(f) -> dict:
    return f.metadata[_RANGE]


def _out_of_range(f, value) -> str | None:
    """Why `value` cannot be field `f`'s, or None: the one range check."""
    if f.name == "ranking":
        try:
            parse_ranking(value)
        except ChitchatError as e:
            return str(e)
        return None
    if value is None and f.default is None:
        return None
    base = _base_type(f.name)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, base) or isinstance(value, bool):
        return f"{f.name} {value!r} must be {'an integer' if base is int else 'a number'}"
    low, high = _meta(f)["low"], _meta(f)["high"]
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        return f"{f.name} {value!r} must be in [{_num(low, '-inf')}, {_num(high, 'inf')}]"
    return None


def _num(x, end: str) -> str:
    return end if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def _base_type(name: str) -> type:
    tp = _HINTS[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def setting_names() -> dict[str, str]:
    """Every spelling `/set` accepts -> the field: the field's name, its flags without dashes, its names."""
    out = {}
    for f in fields(ReplySettings):
        meta = f.metadata["chitchat.option"]
        spellings = [f.name, *_meta(f)["names"], *(a.lstrip("-").replace("-", "_") for a in meta["aliases"])]
        for s in spellings:
            out[s] = f.name
    return out


def setting_name(name: str) -> str:
    key = setting_names().get(name.strip().lower().replace("-", "_"))
    if key is None:
        raise ChitchatError(f"unknown setting {name!r} (settings: {', '.join(f.name for f in fields(ReplySettings))})")
    return key


def _parse(name: str, text: str):
    base = _base_type(name)
    if base is str:
        return text
    if text.lower() in ("none", "random", "off") and ReplySettings.__dataclass_fields__[name].default is None:
        return None
    try:
        return base(text)
    except ValueError:
        raise ChitchatError(f"{name} takes {'an integer' if base is int else 'a number'}, not {text!r}") from None


def describe() -> list[dict]:
    """Each field as the surfaces show it: name, type, default, range, help, other names."""
    out = []
    for f in fields(ReplySettings):
        meta = _meta(f)
        out.append({"name": f.name, "type": _base_type(f.name), "default": f.default, "low": meta["low"],
                    "high": meta["high"], "help": f.metadata["chitchat.option"]["help"],
                    "names": [n for n, key in setting_names().items() if key == f.name and n != f.name]})
    return out


def generation_config(settings: ReplySettings | None = None) -> dict:
    """The sampling part of `settings` (default: the defaults) as `transformers`' GenerationConfig
    fields, so that `generate()` without this package samples as `chitchat chat` does (without its
    ranking)."""
    s = settings or ReplySettings()
    greedy = s.temperature < GREEDY_BELOW
    return {"do_sample": not greedy, "top_k": s.top_k, "top_p": s.top_p or 1.0,
            "temperature": 1.0 if greedy else s.temperature, "repetition_penalty": s.repetition_penalty,
            "no_repeat_ngram_size": s.no_repeat_ngram_size, "min_new_tokens": s.min_len,
            "max_new_tokens": s.max_len}
