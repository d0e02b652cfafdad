"""A chat session: the dialogue so far, the settings, each turn with its candidates, the transcript.

The model sees at most `max_history_len` utterances (the user's and the bot's, counted as
GPT2-chitchat counts them, the user's new one included), and of those only the most recent that fit
its positions together with the longest reply (`Engine.fit_history`). A turn keeps its text, its
candidates and their scores; the transcript is one JSON line per turn (and one per /reset).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from chitchat.errors import ChitchatError
from chitchat.engine.engine import Engine
from chitchat.engine.ranking import effective_ranking, parse_ranking
from chitchat.engine.replies import Candidate, WrittenText
from chitchat.engine.settings import ChatSettings
from chitchat.files import user_data_dir
from chitchat.model.sampling import SamplingConfig
from chitchat.corpus.normalize import normalize

# /set NAME: accepted spellings -> setting
_ALIASES = {
    "temperature": "temperature", "temp": "temperature",
    "topk": "top_k", "top_k": "top_k",
    "topp": "top_p", "top_p": "top_p",
    "repetition_penalty": "repetition_penalty",
    "no_repeat_ngram_size": "no_repeat_ngram_size", "no_repeat_ngram": "no_repeat_ngram_size",
    "min_len": "min_len", "max_len": "max_len", "candidates": "candidates",
    "mmi": "mmi", "ranking": "ranking", "rank": "ranking", "max_history": "max_history_len", "max_history_len": "max_history_len", "seed": "seed",
}
_ON = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}


def default_transcript_path() -> Path:
    return user_data_dir() / "transcripts" / time.strftime("chat-%Y%m%d-%H%M%S.jsonl")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class Turn:
    time: str
    user: str  # as typed (the model sees it normalised)
    bot: str
    candidates: list[Candidate]
    chosen: int
    ranking: str
    settings: dict


class Session:
    def __init__(self, engine: Engine, settings: ChatSettings | None = None):
        self.engine = engine
        self.settings = (settings or ChatSettings()).validate()
        self.history: list[str] = []  # normalised utterances since the last reset, user first
        self.turns: list[Turn] = []
        self.records: list[dict] = []  # transcript lines
        self.generator = torch.Generator()
        self._seed(self.settings.seed)

    def _seed(self, seed: int | None) -> None:
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    @property
    def uses_mmi(self) -> bool:
        return self.settings.mmi and self.engine.mmi is not None

    def context(self, history: list[str] | None = None) -> list[str]:
        """The utterances the model sees: the last `max_history_len`, then the most recent that fit."""
        history = self.settings.visible(self.history if history is None else history)
        ids = [self.engine.encode(u) for u in history]
        kept = self.engine.fit_history(ids, self.settings.sampling.max_len)
        cut = history[len(history) - len(kept):]
        if kept and len(kept[0]) < len(ids[len(ids) - len(kept)]):  # the oldest kept utterance was shortened
            cut = [self.engine.decode(kept[0])] + cut[1:]
        return cut

    @property
    def streams(self) -> bool:
        """Whether a reply is known as it is written: one candidate (several are ranked once written)."""
        return self.settings.sampling.candidates == 1

    def respond(self, text: str, progress: Callable[[str | None], None] | None = None) -> Turn | None:
        """The bot's turn after the user says `text`; None (and nothing recorded) when `text` is blank.
        With `progress`, it is called after each decoding step: with the reply's new text when it
        `streams`, else with None. The same seed gives the same reply either way."""
        user = normalize(text)
        if not user:
            return None
        history = self.history + [user]
        s = self.settings
        if progress is None:
            reply = self.engine.reply(s.visible(history), s.sampling, mmi=s.mmi, generator=self.generator,
                                      ranking=s.ranking)
        else:
            reply = self._reply_with_progress(s.visible(history), progress)
        self.history = history + [reply.text]
        turn = Turn(_now(), text, reply.text, reply.candidates, reply.chosen, reply.ranking, s.to_dict())
        self.turns.append(turn)
        self.records.append({
            "time": turn.time, "user": turn.user, "bot": turn.bot,
            "candidates": [c.to_dict() for c in turn.candidates], "chosen": turn.chosen, "ranking": turn.ranking,
            "settings": turn.settings, "model": self.engine.model_path, "mmi_model": self.engine.mmi_path,
            "int8": self.engine.int8,
        })
        return turn

    def _reply_with_progress(self, history: list[str], progress: Callable[[str | None], None]):
        s = self.settings
        steps = self.engine.replies_stream([history], s.sampling, mmi=s.mmi, generator=self.generator,
                                           ranking=s.ranking)
        written = WrittenText(self.engine) if self.streams else None
        try:
            while True:
                step = next(steps)
                progress(written.add(step, 0) if written is not None else None)
        except StopIteration as end:
            return end.value[0]

    def reset(self) -> None:
        self.history = []
        self.records.append({"time": _now(), "event": "reset"})

    def set(self, name: str, value: str) -> str:
        """Change one setting from its text form; returns what it is now. Raises ChitchatError."""
        key = _ALIASES.get(name.strip().lower().replace("-", "_"))
        if key is None:
            raise ChitchatError(f"unknown setting {name!r} (settings: {', '.join(sorted(set(_ALIASES.values())))})")
        value = value.strip()
        s = self.settings
        if key == "mmi":
            if value.lower() not in _ON:
                raise ChitchatError("mmi takes on or off")
            s.mmi = _ON[value.lower()]
            if s.mmi and self.engine.mmi is None:
                return "mmi on, but there is no MMI model: candidates are ranked by likelihood"
            return f"mmi {'on' if s.mmi else 'off'}"
        if key == "ranking":
            s.ranking = str(parse_ranking(value))
            used = str(effective_ranking(s.ranking, s.mmi, self.engine.mmi is not None))
            if used != s.ranking:
                why = "mmi is off" if not s.mmi else "there is no MMI model"
                return f"ranking {s.ranking}, but {why}: candidates are ranked by {used}"
            return f"ranking {s.ranking}"
        if key == "seed":
            s.seed = None if value.lower() in ("none", "random", "off") else _parse(key, value, int)
            self._seed(s.seed)
            return f"seed {s.seed}"
        if key == "max_history_len":
            n = _parse(key, value, int)
            if n < 1:
                raise ChitchatError("max_history must be >= 1")
            s.max_history_len = n
            return f"max_history {n}"
        kind = type(getattr(SamplingConfig(), key))
        sampling = replace(s.sampling, **{key: _parse(key, value, kind)})
        if key == "max_len" and sampling.min_len > sampling.max_len:
            sampling = replace(sampling, min_len=sampling.max_len)
        sampling.validate()
        self.engine.context_budget(sampling.max_len)  # raises when no history would fit
        s.sampling = sampling
        return f"{key} {getattr(sampling, key)}"

    def save(self, path: str | Path) -> Path:
        """Write the transcript (JSON lines) to `path`, replacing it."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for record in self.records:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
            tmp.replace(path)
        except OSError as e:
            raise ChitchatError(f"cannot write transcript {path}: {e.strerror or e}") from None
        return path


def _parse(name: str, value: str, kind):
    try:
        return kind(value)
    except ValueError:
        raise ChitchatError(f"{name} takes {'an integer' if kind is int else 'a number'}, not {value!r}") from None
