"""What `chitchat eval` is asked to do (`EvalConfig`) and the test cases it reads from dialogue data.

Every reply position of every dialogue (or, with `last_turn_only`, the last one) is a test case: the
preceding utterances (at most `max_history_len`) are the context, the actual utterance the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chitchat.tokens.normalize import normalize
from chitchat.corpus.readers import ReadStats, read_corpus
from chitchat.engine.options import EngineOptions
from chitchat.engine.settings import ReplySettings
from chitchat.options import option

DEFAULT_MAX_HISTORY = ReplySettings.max_history_len  # the context the chat's bot sees
DEFAULT_NEGATIVES = 9  # distractors per case: the true reply is ranked among 10
DEFAULT_SEED = 42  # eval's seed when none is given: a rerun reproduces report.json


def eval_settings() -> ReplySettings:
    return ReplySettings(seed=DEFAULT_SEED)


@dataclass
class EvalConfig:
    """Everything `chitchat eval` does; the fields with a flag are its command line (chitchat.commands.eval).
    `engine` holds which MMI model and where the models run (chitchat.engine.options), `settings` how
    replies are made (chitchat.engine.settings: sampling, ranking, context length, seed): both are
    the chat's own flags."""

    models: list[str] = option(cli=False, help="dialogue model directories")
    output: Path = option(aliases=("-o",), metavar="DIR", help="run directory for cases.jsonl, report.json, report.md")
    data: list[str] = option(nargs="+", metavar="FILE", default_factory=list,
                             help="dialogue files, folders or globs (any corpus format): generation, perplexity "
                                  "and coherence test cases")
    engine: EngineOptions = option(default_factory=lambda: EngineOptions(threads=None), group="model",
                                   help="the MMI model, device, threads, int8 (the engine flags)")
    settings: ReplySettings = option(default_factory=eval_settings, group="reply settings",
                                     help="how replies are made and ranked (the reply settings' flags)")
    compare_mmi: bool = option(False, help="report each model with its ranking and with likelihood alone")
    limit: int | None = option(None, metavar="N", help="evaluate at most N test cases (and N selection contexts)")
    batch_size: int = option(32, metavar="N", help="test cases generated (and candidate sets scored) together")
    last_turn_only: bool = option(False, help="only the last reply of each dialogue is a test case")
    format: str | None = option(None, help="input format of --data (default: detected per file)")
    progress: bool | None = option(None, help="progress bars (default: when stderr is a terminal)")
    negatives: int = option(DEFAULT_NEGATIVES, metavar="N",
                            help="coherence: rank each true reply among N replies drawn from other dialogues "
                                 "of the data (0: off)")
    selection: str | None = option(None, metavar="FILE",
                                   help="response-selection file (Douban / E-commerce layout: "
                                        "label<TAB>utt1<TAB>...<TAB>response) ranked by its own candidates")


@dataclass
class Case:
    context: list[str]
    reference: str
    source: str
    dialogue: int = -1  # index of its dialogue in what `read_dialogues` returned


def seed_of(cfg: EvalConfig) -> int:
    """The seed of the sampling and of the distractors."""
    return DEFAULT_SEED if cfg.settings.seed is None else cfg.settings.seed


def read_dialogues(cfg: EvalConfig, stats: ReadStats) -> tuple[list[list[str]], list[str]]:
    """Every dialogue of the dataset files (its utterances normalised, empty ones dropped) and the
    source of each."""
    dialogues, sources = [], []
    for d in read_corpus(cfg.data, stats, cfg.format):
        dialogues.append([u for u in (normalize(x) for x in d.utterances) if u])
        sources.append(d.source)
    return dialogues, sources


def cases_from(dialogues: list[list[str]], sources: list[str], cfg: EvalConfig, stats: ReadStats) -> list[Case]:
    """The test cases of the dialogues, at most `cfg.limit`; a dialogue of fewer than 2 utterances is a
    counted skip."""
    cases: list[Case] = []
    for k, (utts, source) in enumerate(zip(dialogues, sources)):
        if len(utts) < 2:
            stats.skip("fewer_than_2_utterances", source)
            continue
        positions = [len(utts) - 1] if cfg.last_turn_only else range(1, len(utts))
        for i in positions:
            cases.append(Case(utts[max(0, i - cfg.settings.max_history_len):i], utts[i], f"{source}/{i}", k))
            if cfg.limit is not None and len(cases) >= cfg.limit:
                return cases
    return cases


def build_cases(cfg: EvalConfig, stats: ReadStats) -> list[Case]:
    """Test cases from the dataset files, normalised; empty utterances dropped."""
    dialogues, sources = read_dialogues(cfg, stats)
    return cases_from(dialogues, sources, cfg, stats)
