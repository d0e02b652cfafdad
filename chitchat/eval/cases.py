"""What `chitchat eval` is asked to do (`EvalConfig`) and the test cases it reads from dialogue data.

Every reply position of every dialogue (or, with `last_turn_only`, the last one) is a test case: the
preceding utterances (at most `max_history_len`) are the context, the actual utterance the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chitchat.corpus.normalize import normalize
from chitchat.corpus.readers import ReadStats, read_corpus
from chitchat.engine.ranking import DEFAULT_RANKING
from chitchat.engine.settings import ChatSettings
from chitchat.model.sampling import SamplingConfig
from chitchat.options import option

DEFAULT_MAX_HISTORY = ChatSettings.max_history_len  # the context the chat's bot sees
DEFAULT_NEGATIVES = 9  # distractors per case: the true reply is ranked among 10


@dataclass
class EvalConfig:
    """Everything `chitchat eval` does; the fields with a flag are its command line (chitchat.eval.cli).
    The engine flags (--model, --mmi-model, --device, --threads, --int8) come from
    chitchat.engine.options and the sampling flags from SamplingConfig."""

    models: list[str] = option(cli=False, help="dialogue model directories")
    output: Path = option(aliases=("-o",), metavar="DIR", help="run directory for cases.jsonl, report.json, report.md")
    data: list[str] = option(nargs="+", metavar="FILE", default_factory=list,
                             help="dialogue files, folders or globs (any corpus format): generation, perplexity "
                                  "and coherence test cases")
    mmi_model: str | None = option(None, cli=False, help="MMI model: replies are ranked by it")
    compare_mmi: bool = option(False, help="report each model with and without MMI ranking")
    limit: int | None = option(None, metavar="N", help="evaluate at most N test cases (and N selection contexts)")
    seed: int = option(42, help="seed of the sampling and of the distractors (a rerun reproduces report.json)")
    batch_size: int = option(32, metavar="N", help="test cases generated (and candidate sets scored) together")
    last_turn_only: bool = option(False, help="only the last reply of each dialogue is a test case")
    max_history_len: int = option(DEFAULT_MAX_HISTORY, metavar="N", help="utterances of context at most")
    format: str | None = option(None, help="input format of --data (default: detected per file)")
    sampling: SamplingConfig = option(cli=False, default_factory=SamplingConfig, help="how replies are sampled")
    ranking: str = option(DEFAULT_RANKING, cli=False, help="how the MMI-ranked replies are chosen (--ranking)")
    int8: bool = option(False, cli=False, help="int8 weights (CPU)")
    device: str = option("cpu", cli=False, help="cpu or cuda[:N]")
    threads: int | None = option(None, cli=False, help="torch threads; none: torch's default (every core), "
                                                       "right for a batch job")
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
            cases.append(Case(utts[max(0, i - cfg.max_history_len):i], utts[i], f"{source}/{i}", k))
            if cfg.limit is not None and len(cases) >= cfg.limit:
                return cases
    return cases


def build_cases(cfg: EvalConfig, stats: ReadStats) -> list[Case]:
    """Test cases from the dataset files, normalised; empty utterances dropped."""
    dialogues, sources = read_dialogues(cfg, stats)
    return cases_from(dialogues, sources, cfg, stats)
