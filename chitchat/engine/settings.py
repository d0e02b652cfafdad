"""A conversation's reply settings: sampling, ranking, how much history the model sees, the seed.
The chat, the evaluator and the server share them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from chitchat.engine.ranking import DEFAULT_RANKING, parse_ranking
from chitchat.errors import ChitchatError
from chitchat.model.sampling import SamplingConfig


@dataclass
class ChatSettings:
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    mmi: bool = True  # use the MMI model when there is one (off: rank by likelihood)
    ranking: str = DEFAULT_RANKING  # how candidates are ranked (chitchat.engine.ranking)
    max_history_len: int = 3  # utterances the model sees, the user's new one included
    seed: int | None = None

    def validate(self) -> "ChatSettings":
        self.sampling.validate()
        if self.max_history_len < 1:
            raise ChitchatError(f"max_history_len {self.max_history_len} must be >= 1")
        self.ranking = str(parse_ranking(self.ranking))
        return self

    def to_dict(self) -> dict:
        return {**asdict(self.sampling), "mmi": self.mmi, "ranking": self.ranking, "max_history_len": self.max_history_len, "seed": self.seed}

    def visible(self, history: list) -> list:
        """The utterances of `history` (the new one last) the model is given: the last `max_history_len`
        (the engine then keeps the most recent that fit its positions). The chat and the server share it."""
        return history[-self.max_history_len:]
