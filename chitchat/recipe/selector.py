"""Training the learned selector (chitchat.engine.selector): `chitchat selector`.

Contexts come from dialogues the response index held out (`chitchat index --holdout-every N` writes
them to holdout.jsonl), so that the index never hands back a context's own reply. For each context
the candidates are the reply a person gave (label 1) and negatives that look like the bot's
mistakes (label 0): utterances of other dialogues, near-miss replies retrieved from the index, and
the dialogue model's own sampled replies. Every candidate is scored by the engine (likelihood, MMI,
PMI) and described by the selector's features; a logistic regression (scikit-learn) learns the
weights, and they are written as JSON. One context in five is kept out of the fit, to report how
often the selector ranks the true reply first there.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from chitchat.corpus.readers import ReadStats, read_corpus
from chitchat.engine.engine import Engine
from chitchat.engine.replies import Candidate
from chitchat.engine.scoring import Group
from chitchat.engine.selector import FEATURES, KIND, VERSION, feature_rows
from chitchat.engine.settings import ReplySettings
from chitchat.errors import ChitchatError
from chitchat.options import option
from chitchat.tokens.normalize import normalize


@dataclass
class SelectorConfig:
    holdout: list[str] = option(flag="holdout", nargs="+", metavar="FILE",
                                help="dialogues to learn from, none of them in the index (an index's holdout.jsonl)")
    output: Path = option(aliases=("-o",), metavar="FILE", help="the selector file to write (selector.json)")
    exclude: list[str] = option(nargs="*", metavar="FILE", default_factory=list,
                                help="corpora whose dialogues are left out of the training (kept for judging)")
    contexts: int = option(3000, metavar="N", help="contexts to learn from (a fifth of them kept out to test)")
    random_negatives: int = option(3, metavar="N", help="utterances of other dialogues per context")
    retrieved_negatives: int = option(3, metavar="N", help="near-miss replies from the index per context")
    sampled_negatives: int = option(3, metavar="N", help="the dialogue model's sampled replies per context")
    max_history_len: int = option(3, metavar="N", help="utterances of context, the reply's own included")
    c: float = option(1.0, metavar="C", help="inverse regularisation strength of the logistic regression")
    seed: int = option(1, help="seed of the draws and the sampling")
    batch_size: int = option(64, metavar="N", help="contexts sampled and scored together")


def read_contexts(cfg: SelectorConfig) -> tuple[list[tuple[list[str], str, int]], list[list[str]]]:
    """(context, true reply, dialogue) of up to `cfg.contexts` reply positions drawn from the holdout
    dialogues (those also in `cfg.exclude` left out), and the dialogues."""
    stats = ReadStats()
    excluded = {tuple(normalize(u) for u in d.utterances) for d in read_corpus(cfg.exclude, stats)} if cfg.exclude else set()
    dialogues = []
    for d in read_corpus(cfg.holdout, stats):
        utts = [u for u in (normalize(x) for x in d.utterances) if u]
        if len(utts) >= 2 and tuple(utts) not in excluded:
            dialogues.append(utts)
    if not dialogues:
        raise ChitchatError(f"no dialogue of two utterances or more in {', '.join(cfg.holdout)}")
    positions = [(k, i) for k, utts in enumerate(dialogues) for i in range(1, len(utts))]
    rng = random.Random(cfg.seed)
    rng.shuffle(positions)
    keep = cfg.max_history_len - 1
    return ([(dialogues[k][max(0, i - keep):i], dialogues[k][i], k) for k, i in positions[:cfg.contexts]],
            dialogues)


def candidate_groups(engine: Engine, cases, dialogues, cfg: SelectorConfig) -> tuple[list[Group], list[list[int]]]:
    """Each case's candidates (the true reply first) and their labels."""
    rng = random.Random(cfg.seed)
    pool = [(k, u) for k, utts in enumerate(dialogues) for u in utts]
    settings = ReplySettings(candidates=cfg.sampled_negatives, retrieved=0, ranking="likelihood", seed=cfg.seed)
    index = next((s.index for s in engine.sources if s.name == "retrieved"), None)
    if index is None:
        raise ChitchatError("the selector learns near misses from a response index: give the model one (--index)")
    groups, labels = [], []
    for start in range(0, len(cases), cfg.batch_size):
        batch = cases[start:start + cfg.batch_size]
        sampled = engine.generate([c for c, _, _ in batch], settings) if cfg.sampled_negatives else [[] for _ in batch]
        near = index.query_many([c for c, _, _ in batch], k=cfg.retrieved_negatives + 2)
        for (context, true, k), mine, hits in zip(batch, sampled, near):
            texts = [true]
            while len(texts) < 1 + cfg.random_negatives:
                other, u = pool[rng.randrange(len(pool))]
                if other != k and u not in texts:
                    texts.append(u)
            texts += [h.reply for h in hits if h.reply not in texts][:cfg.retrieved_negatives]
            cands = [Candidate(t, engine.encode(t)[:64], "given") for t in texts]
            cands += [c for c in mine if c.text and c.text != true]
            groups.append(Group(engine.prompt(context, ReplySettings(max_len=64)), cands))
            labels.append([1] + [0] * (len(cands) - 1))
    return groups, labels


def train_selector(engine: Engine, cfg: SelectorConfig, say=print) -> dict:
    """Fit the selector on `cfg.holdout`, write `cfg.output`; returns the spec written."""
    started = time.perf_counter()
    cases, dialogues = read_contexts(cfg)
    say(f"{len(cases)} contexts from {len(dialogues)} held-out dialogues")
    groups, labels = candidate_groups(engine, cases, dialogues, cfg)
    engine.score(groups, ["likelihood", "mmi", "pmi"])
    rows = feature_rows(engine, groups)
    test = set(range(0, len(groups), 5))
    fit_x = np.concatenate([r for i, r in enumerate(rows) if i not in test])
    fit_y = np.concatenate([labels[i] for i in range(len(groups)) if i not in test])
    fit_x = np.nan_to_num(fit_x, nan=0.0, posinf=50.0, neginf=-50.0)
    mean, scale = fit_x.mean(axis=0), fit_x.std(axis=0) + 1e-9
    model = LogisticRegression(C=cfg.c, class_weight="balanced", max_iter=2000)
    model.fit((fit_x - mean) / scale, fit_y)
    coef, intercept = model.coef_[0], float(model.intercept_[0])

    def recall_at_1(column: int | None) -> float:
        hits = 0
        for i in test:
            x = np.nan_to_num(rows[i], nan=0.0, posinf=50.0, neginf=-50.0)
            s = ((x - mean) / scale) @ coef if column is None else -x[:, column]
            hits += int(np.argmax(s) == 0 and s[0] > max(s[1:], default=-np.inf))
        return hits / len(test)

    metrics = {"test_contexts": len(test), "candidates_per_context": float(np.mean([len(g.candidates) for g in groups])),
               "recall_at_1": {"selector": recall_at_1(None),
                               **{name: recall_at_1(FEATURES.index(name)) for name in ("likelihood", "mmi", "pmi")}}}
    spec = {"kind": KIND, "version": VERSION, "features": list(FEATURES), "mean": mean.tolist(),
            "scale": scale.tolist(), "coef": coef.tolist(), "intercept": intercept,
            "trained": {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                        "model": engine.model_path, "mmi_model": engine.mmi_path, "index": engine.index_path,
                        "contexts": len(cases), "candidates": int(sum(len(g.candidates) for g in groups)),
                        "seconds": round(time.perf_counter() - started, 1), "metrics": metrics}}
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    cfg.output.write_text(json.dumps(spec, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    say(f"wrote {cfg.output}: Recall@1 among each test context's candidates {metrics['recall_at_1']}")
    return spec
