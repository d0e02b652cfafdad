"""Response selection: rank each context's own candidates (Douban / E-commerce layout) by every scoring.

The file: `label<TAB>utt1<TAB>...<TAB>response` per line, `1` a true response and `0` a wrong one,
each context repeated on consecutive lines, once per candidate; words may be space-separated (they
are normalised as the corpus readers normalise them, which joins Chinese words). The metrics are the
Douban paper's (Wu et al., ACL 2017): a context with no true or no wrong candidate is skipped and
counted; R10@k is computed over the contexts with exactly 10 candidates (the others still count in
MAP, MRR and P@1), and is absent when there is none. The context given to the models is the last
`max_history_len` utterances, bounded as the chat bounds it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from chitchat.corpus.layouts import LABELS
from chitchat.tokens.normalize import normalize
from chitchat.corpus.sources import Source, decoded_lines
from chitchat.engine.engine import Engine
from chitchat.engine.ranking import Ranking
from chitchat.errors import ChitchatError
from chitchat.eval.ranking import (CHAT, average_precision, mean, precision_at_1, ranked_labels, recall_at,
                                   reciprocal_rank, scorings, values)
from chitchat.eval.scoring import score_sets

R10 = 10  # R10@k: the true responses among the top k of 10 candidates
LAYOUT = "label<TAB>utt1<TAB>...<TAB>response, label 0 or 1"


@dataclass
class SelectionGroup:
    context: list[str]
    candidates: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    source: str = ""


def read_selection_file(path: str | Path, skipped: Counter) -> list[SelectionGroup]:
    """The contexts of a response-selection file with their candidates and labels, in file order. A
    file whose first non-blank line is not in the layout is a one-line ChitchatError; a later line not
    in it, or not UTF-8, is a counted skip."""
    path = Path(path)
    if not path.is_file():
        raise ChitchatError(f"--selection {path}: no such file")
    groups: list[SelectionGroup] = []
    raw_context = None
    with Source(path).open() as f:
        for lineno, line in decoded_lines(f):
            if line is not None and not line.strip():
                continue
            cells = line.split("\t") if line is not None else []
            if line is None or cells[0].strip() not in LABELS or len(cells) < 3:
                if not groups:
                    what = "is not UTF-8" if line is None else f"reads {line[:40]!r}"
                    raise ChitchatError(f"--selection {path} is not a response-selection file: line {lineno} {what}; "
                                        f"expected {LAYOUT}")
                skipped["invalid_utf8" if line is None else "bad_line"] += 1
                continue
            if cells[1:-1] != raw_context:
                raw_context = cells[1:-1]
                context = [u for u in (normalize(x) for x in raw_context) if u]
                groups.append(SelectionGroup(context, source=f"{path}:{lineno}"))
            groups[-1].candidates.append(normalize(cells[-1]))
            groups[-1].labels.append(int(cells[0].strip()))
    if not groups:
        raise ChitchatError(f"--selection {path} is empty; expected {LAYOUT}")
    return groups


def usable_groups(groups: list[SelectionGroup], skipped: Counter, limit: int | None = None) -> list[SelectionGroup]:
    """The contexts that have both a true and a wrong candidate (the others counted), at most `limit`."""
    kept = []
    for g in groups:
        if limit is not None and len(kept) >= limit:
            break
        if not any(g.labels):
            skipped["no_true_candidate"] += 1
        elif all(g.labels):
            skipped["no_wrong_candidate"] += 1
        else:
            kept.append(g)
    return kept


def selection_metrics(rankings: list[list[int]]) -> dict:
    """The Douban metrics of ranked label lists (see the module docstring)."""
    ten = [r for r in rankings if len(r) == R10]
    return {
        "r10_at_1": mean([recall_at(r, 1) for r in ten]), "r10_at_2": mean([recall_at(r, 2) for r in ten]),
        "r10_at_5": mean([recall_at(r, 5) for r in ten]),
        "map": mean([average_precision(r) for r in rankings]), "mrr": mean([reciprocal_rank(r) for r in rankings]),
        "p_at_1": mean([precision_at_1(r) for r in rankings]),
    }


def selection(engine: Engine, groups: list[SelectionGroup], max_history_len: int, chat: Ranking, chunk: int = 32,
              advance=None) -> tuple[dict, list[dict]]:
    """Every scoring's metrics over the groups (the chat's ranking `chat` among them), and each
    group's ranked labels per scoring."""
    names = scorings(engine)
    sets = [(g.context[-max_history_len:], g.candidates) for g in groups]
    scored = score_sets(engine, sets, [n for n in names if n != CHAT] + chat.names, chunk, advance)
    ranked = [{name: ranked_labels(values(name, cands, chat), g.labels) for name in names}
              for g, cands in zip(groups, scored)]
    return {name: selection_metrics([r[name] for r in ranked]) for name in names}, ranked
