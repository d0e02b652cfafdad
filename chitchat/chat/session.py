"""A chat session: the dialogue so far, the settings, each turn with its candidates, the transcript.

The model sees at most `max_history_len` utterances (the user's and the bot's, counted as
GPT2-chitchat counts them, the user's new one included), and of those only the most recent that fit
its positions together with the longest reply (`Engine.fit_history`). A turn keeps its text, its
candidates and their scores; the transcript is one JSON line per turn (and one per /reset).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from chitchat.engine.engine import Engine
from chitchat.engine.ranking import DEFAULT_RANKING
from chitchat.engine.replies import Candidate, WrittenText
from chitchat.engine.settings import ReplySettings, setting_name
from chitchat.errors import ChitchatError
from chitchat.files import user_data_dir
from chitchat.tokens.normalize import normalize

# `/set mmi on|off`: MMI is a ranking (the default one, or likelihood alone)
_MMI = {"on": DEFAULT_RANKING, "true": DEFAULT_RANKING, "yes": DEFAULT_RANKING, "1": DEFAULT_RANKING,
        "off": "likelihood", "false": "likelihood", "no": "likelihood", "0": "likelihood"}


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
    def __init__(self, engine: Engine, settings: ReplySettings | None = None):
        self.engine = engine
        self.settings = (settings or ReplySettings()).validate()
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

    def context(self, history: list[str] | None = None) -> list[str]:
        """The utterances the model sees: the last `max_history_len`, then the most recent that fit."""
        history = (self.history if history is None else history)[-self.settings.max_history_len:]
        ids = [self.engine.encode(u) for u in history]
        kept = self.engine.fit_history(ids, self.settings.max_len)
        cut = history[len(history) - len(kept):]
        if kept and len(kept[0]) < len(ids[len(ids) - len(kept)]):  # the oldest kept utterance was shortened
            cut = [self.engine.decode(kept[0])] + cut[1:]
        return cut

    @property
    def streams(self) -> bool:
        """Whether a reply is known as it is written: one candidate (several are ranked once written)."""
        return self.engine.streams(self.settings)

    def respond(self, text: str, progress: Callable[[str | None], None] | None = None) -> Turn | None:
        """The bot's turn after the user says `text`; None (and nothing recorded) when `text` is blank.
        With `progress`, it is called after each decoding step: with the reply's new text when it
        `streams`, else with None. The same seed gives the same reply either way."""
        user = normalize(text)
        if not user:
            return None
        history = self.history + [user]
        if progress is None:
            reply = self.engine.reply(history, self.settings, generator=self.generator)
        else:
            reply = self._reply_with_progress(history, progress)
        self.history = history + [reply.text]
        turn = Turn(_now(), text, reply.text, reply.candidates, reply.chosen, reply.ranking, self.settings.to_dict())
        self.turns.append(turn)
        self.records.append({
            "time": turn.time, "user": turn.user, "bot": turn.bot,
            "candidates": [c.to_dict() for c in turn.candidates], "chosen": turn.chosen, "ranking": turn.ranking,
            "settings": turn.settings, "model": self.engine.model_path, "mmi_model": self.engine.mmi_path,
            "int8": self.engine.int8,
        })
        return turn

    def _reply_with_progress(self, history: list[str], progress: Callable[[str | None], None]):
        steps = self.engine.replies_stream([history], self.settings, generator=self.generator)
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
        """Change one setting from its text form (`/set NAME VALUE`); returns what it is now. Raises
        ChitchatError."""
        if name.strip().lower() == "mmi":  # MMI on or off is a ranking
            if value.strip().lower() not in _MMI:
                raise ChitchatError("mmi takes on or off")
            name, value = "ranking", _MMI[value.strip().lower()]
        key = setting_name(name)
        settings = self.settings.with_text(key, value)
        self.engine.context_budget(settings.max_len)  # raises when no history would fit
        self.settings = settings
        if key == "seed":
            self._seed(settings.seed)
        if key == "ranking":
            used = str(self.engine.ranking_for(settings.ranking))
            if used != settings.ranking:
                return f"ranking {settings.ranking}, but this model cannot compute all of it: candidates are ranked by {used}"
        return f"{key} {getattr(settings, key)}"

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
