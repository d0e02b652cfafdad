"""Judged evaluation (SSA, Adiwardana et al. 2020): a blind judging sheet of several systems' replies to
the same contexts, and the judges' sensible / specific judgments read back into sensibleness,
specificity and SSA per system and per data file, with the judges' agreement. Pure Python, no model;
the protocol and the file formats: docs/evaluation.md, "Judged evaluation (SSA)".

A system is whatever produced replies: a model, a ranking, a setting, people. Identical (context, reply)
pairs are one item of the sheet, whichever systems gave them: judges score them alike by construction.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from chitchat.errors import ChitchatError
from chitchat.files import sha256_file

HUMAN = "human"  # the true next utterance as a system: it calibrates the judges (people score about 0.9)
KEY_FORMAT = "chitchat judging key 1"
FIGURES = ("sensible", "specific", "ssa", "relevance")


@dataclass(frozen=True)
class Answer:
    """One system's reply to one context; `case` names the context within its data file."""

    system: str
    data: str
    case: str
    context: tuple[str, ...]
    reply: str
    origin: str = field(default="", compare=False)  # "file:line", for messages


@dataclass(frozen=True)
class Judgment:
    sensible: int
    specific: int
    relevance: int | None = None


# -- reading replies -------------------------------------------------------------------------------

def _json_lines(path: Path):
    """(line number, object) of each non-blank line of a JSON-lines file; anything else is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ChitchatError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ChitchatError(f"{path}: not UTF-8 text") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ChitchatError(f"{path}:{lineno}: not a JSON line ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ChitchatError(f"{path}:{lineno}: not a JSON object")
        yield lineno, obj


def _utterances(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(u, str) and u.strip() for u in value):
        raise ChitchatError(f"{where}: context must be a non-empty list of non-empty strings")
    return tuple(value)


def data_name(source: str) -> str:
    """The data file of a `chitchat eval` case ("path:line/i" or "path#index/i"): its file name."""
    path = re.sub(r"(?:[:#][^:#/]*)?/\d+$", "", source)
    return Path(path).name or path


def read_cases(path: str | Path, label: str | None = None, human: bool = True) -> list[Answer]:
    """The replies of `chitchat eval`'s cases.jsonl: each column (model x ranking) is a system, named
    "LABEL/column" when a label is given (to tell runs apart); with `human`, each case's reference too."""
    answers = []
    for lineno, obj in _json_lines(Path(path)):
        where = f"{path}:{lineno}"
        if not isinstance(obj.get("source"), str) or not isinstance(obj.get("systems"), dict):
            raise ChitchatError(f"{where}: not a case of chitchat eval's cases.jsonl (source, context, reference, systems)")
        context, case = _utterances(obj.get("context"), where), obj["source"]
        for column, value in obj["systems"].items():
            reply = value.get("reply") if isinstance(value, dict) else None
            if not isinstance(reply, str):
                raise ChitchatError(f"{where}: system {column!r} has no reply")
            answers.append(Answer(f"{label}/{column}" if label else column, data_name(case), case, context, reply, where))
        if human:
            if not isinstance(obj.get("reference"), str):
                raise ChitchatError(f"{where}: no reference")
            answers.append(Answer(HUMAN, data_name(case), case, context, obj["reference"], where))
    return answers


def read_replies(path: str | Path) -> list[Answer]:
    """Replies made elsewhere, JSON lines {"system", "data", "context": [...], "reply"} ("case" optional:
    the context itself names it; "data" optional: this file's name)."""
    answers = []
    for lineno, obj in _json_lines(Path(path)):
        where = f"{path}:{lineno}"
        system, reply, data = obj.get("system"), obj.get("reply"), obj.get("data", Path(path).name)
        if not isinstance(system, str) or not system.strip():
            raise ChitchatError(f"{where}: no system (a non-empty string)")
        if not isinstance(reply, str):
            raise ChitchatError(f"{where}: no reply (a string)")
        if not isinstance(data, str) or not data.strip():
            raise ChitchatError(f"{where}: data must be a non-empty string")
        context = _utterances(obj.get("context"), where)
        case = obj.get("case")
        if case is None:
            case = "ctx-" + hashlib.sha256("\n".join(context).encode("utf-8")).hexdigest()[:12]
        elif not isinstance(case, (str, int)) or isinstance(case, bool):
            raise ChitchatError(f"{where}: case must be a string or a number")
        answers.append(Answer(system, data, str(case), context, reply, where))
    return answers


def _one_each(answers: list[Answer]) -> tuple[list[Answer], int]:
    """One answer per (system, data, case) and one context per (data, case): an exact repeat (the same
    reference read from two runs) is dropped and counted; a different reply or context is an error."""
    contexts, seen, kept, repeats = {}, {}, [], 0
    for a in answers:
        first = contexts.setdefault((a.data, a.case), a)
        if first.context != a.context:
            raise ChitchatError(f"{a.origin}: case {a.case} of {a.data} has another context at {first.origin}")
        prev = seen.setdefault((a.system, a.data, a.case), a)
        if prev is a:
            kept.append(a)
        elif prev.reply == a.reply:
            repeats += 1
        else:
            raise ChitchatError(f"{a.origin}: system {a.system!r} answered case {a.case} of {a.data} differently at "
                                f"{prev.origin} (name each run: --cases LABEL=FILE)")
    return kept, repeats


# -- the sheet -------------------------------------------------------------------------------------

INSTRUCTIONS = """# Judging instructions

You judge replies in Chinese conversations. Each item of your sheet is a short conversation (the
context, up to a few turns) and one reply to it, the next turn. Judge each item on its own, by reading
it, with only the sheet and these instructions in front of you.

- **sensible** (1 or 0): the reply makes sense as the next turn: fluent, logical, on-topic with the
  context (answers or responds to what was last said, or continues naturally), not contradicting the
  context. Vague but fitting counts as sensible. Gibberish, off-topic, self-contradiction, and
  mismatched roles (answering a question nobody asked, counselling someone who asked for nothing,
  claiming to be the person addressed) are not. A factual slip in an otherwise fitting reply can stay
  sensible.
- **specific** (1 or 0, only if sensible; 0 when not sensible): the reply is specific to this context,
  not a generic one that would fit almost any context ("我不知道", "哈哈", "是啊", "好的").
- **relevance** (optional, 1 to 5): 5 answers the last utterance fully, 3 loosely related, 1 unrelated
  or nonsense.

Write one JSON line per item, every item of the sheet, into your own file (for example
`judge1.jsonl`), the id copied from the sheet:

    {{"id": "{example}", "sensible": 1, "specific": 0, "relevance": 3}}

Rules: judge every item yourself by reading it (no keyword rules, no script that scores); open no
other file (not the key, not another judge's sheet or judgments); give the same scores to items
with the same context and reply. The sheet holds {items} items.
"""


def _speakers(n: int) -> list[str]:
    """A and B taking turns, the reply being B's: the last utterance of the context is A's."""
    return ["A" if (n - 1 - j) % 2 == 0 else "B" for j in range(n)]


def sheet_markdown(sheet: list[dict], title: str) -> str:
    """The sheet for people: each item's id, its context turn by turn, and the reply."""
    lines = [f"# {title}: {len(sheet)} items", "",
             "Judge each reply as the next turn of its conversation (instructions.md); answer one JSON line per "
             'item: {"id": ..., "sensible": 0 or 1, "specific": 0 or 1}.', ""]
    for n, item in enumerate(sheet, 1):
        lines += [f"## {n}. `{item['id']}`", ""]
        lines += [f"- {s}: {u}" for s, u in zip(_speakers(len(item["context"])), item["context"])]
        lines += [f"- **B (reply)**: {item['reply'] or '(empty)'}", ""]
    return "\n".join(lines)


def _write_sheet_files(out: Path, stem: str, sheet: list[dict], title: str) -> None:
    (out / f"{stem}.jsonl").write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in sheet), encoding="utf-8")
    (out / f"{stem}.md").write_text(sheet_markdown(sheet, title), encoding="utf-8")


def _sample_contexts(answers: list[Answer], contexts: int | None, per_data: bool, seed: int) -> set:
    """The (data, case) of the contexts to judge: all, or `contexts` drawn in all (or from each data file)."""
    keys = sorted({(a.data, a.case) for a in answers})
    if contexts is None:
        return set(keys)
    if contexts < 1:
        raise ChitchatError("--contexts must be at least 1")
    rng = random.Random(f"{seed}/contexts")
    pools = [[k for k in keys if k[0] == d] for d in sorted({d for d, _ in keys})] if per_data else [keys]
    return {k for pool in pools for k in rng.sample(pool, min(contexts, len(pool)))}


def write_sheet(answers: list[Answer], out: str | Path, *, judges: int = 2, contexts: int | None = None,
                per_data: bool = False, seed: int = 1, inputs: list[str | Path] = ()) -> dict:
    """Write the blind sheet of `answers` into the new folder `out`: sheet.jsonl / sheet.md (items
    shuffled by `seed`, random-looking ids, no system named), sheet_judgeK.jsonl / .md for K = 1..judges
    (each its own order), instructions.md, and key.json (id -> context, reply and every (system, data,
    case) that gave it; never for the judges). Returns the key."""
    if judges < 1:
        raise ChitchatError("--judges must be at least 1")
    out = Path(out)
    if (out / "key.json").exists():
        raise ChitchatError(f"{out} already holds a judging sheet (key.json): choose another output folder")
    answers, repeats = _one_each(answers)
    if not answers:
        raise ChitchatError("no replies to judge")
    chosen = _sample_contexts(answers, contexts, per_data, seed)
    answers = [a for a in answers if (a.data, a.case) in chosen]
    groups = defaultdict(list)  # identical (context, reply): one item, whoever said it
    for a in answers:
        groups[(a.context, a.reply)].append({"system": a.system, "data": a.data, "case": a.case})
    pairs = sorted(groups)  # the order of the inputs does not matter, only the seed
    rng = random.Random(seed)
    rng.shuffle(pairs)
    ids: list[str] = []
    while len(ids) < len(pairs):
        new = f"{rng.getrandbits(32):08x}"
        if new not in ids:
            ids.append(new)
    items = {i: {"context": list(c), "reply": r, "answers": groups[(c, r)]} for i, (c, r) in zip(ids, pairs)}
    sheet = [{"id": i, "context": it["context"], "reply": it["reply"]} for i, it in items.items()]
    out.mkdir(parents=True, exist_ok=True)
    _write_sheet_files(out, "sheet", sheet, "Judging sheet")
    for k in range(1, judges + 1):
        order = list(sheet)
        random.Random(f"{seed}/judge{k}").shuffle(order)
        _write_sheet_files(out, f"sheet_judge{k}", order, f"Judging sheet of judge {k}")
    (out / "instructions.md").write_text(INSTRUCTIONS.format(example=ids[0], items=len(sheet)), encoding="utf-8")
    key = {
        "format": KEY_FORMAT, "seed": seed, "judges": judges,
        "systems": list(dict.fromkeys(a.system for a in answers)),
        "data": sorted({a.data for a in answers}),
        "contexts": len(chosen), "answers": len(answers), "repeats_dropped": repeats,
        "inputs": [{"path": str(p), "sha256": sha256_file(p)} for p in inputs],
        "sheets": ["sheet.jsonl"] + [f"sheet_judge{k}.jsonl" for k in range(1, judges + 1)],
        "items": items,
    }
    (out / "key.json").write_text(json.dumps(key, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return key


# -- reading judgments back --------------------------------------------------------------------------

def load_key(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ChitchatError(f"{path}: no such file")
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        key = None
    if not isinstance(key, dict) or key.get("format") != KEY_FORMAT:
        raise ChitchatError(f"{path}: not a judging key (the key.json of chitchat judge sheet)")
    return key


def _flag(obj: dict, name: str, where: str) -> int:
    value = obj.get(name)
    if value is True or value is False or (type(value) is int and value in (0, 1)):
        return int(value)
    raise ChitchatError(f"{where}: {name} must be 0 or 1, not {json.dumps(value, ensure_ascii=False)}")


def read_judgments(path: str | Path, ids) -> dict[str, Judgment]:
    """One judge's JSON lines {"id", "sensible", "specific", "relevance" (optional)}, checked against the
    key's item ids; every bad line is a one-line error naming the file and line."""
    got: dict[str, Judgment] = {}
    for lineno, obj in _json_lines(Path(path)):
        where = f"{path}:{lineno}"
        item = obj.get("id")
        if not isinstance(item, str) or item not in ids:
            raise ChitchatError(f"{where}: unknown id {json.dumps(item, ensure_ascii=False)} (not an item of the sheet)")
        if item in got:
            raise ChitchatError(f"{where}: item {item} judged a second time")
        sensible = _flag(obj, "sensible", where)
        specific = 0 if not sensible and obj.get("specific") is None else _flag(obj, "specific", where)
        if specific and not sensible:
            raise ChitchatError(f"{where}: specific 1 with sensible 0 (only a sensible reply can be specific)")
        relevance = obj.get("relevance")
        if relevance is not None and not (type(relevance) is int and 1 <= relevance <= 5):
            raise ChitchatError(f"{where}: relevance must be 1 to 5, not {json.dumps(relevance, ensure_ascii=False)}")
        got[item] = Judgment(sensible, specific, relevance)
    if not got:
        raise ChitchatError(f"{path}: no judgments")
    return got


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _rates(judgments: list[Judgment]) -> dict:
    """Sensible and specific rates over all judged answers (a reply that is not sensible is not
    specific), SSA their mean, and the mean relevance where given."""
    sensible = _mean([j.sensible for j in judgments])
    specific = _mean([j.specific for j in judgments])
    return {"sensible": sensible, "specific": specific, "ssa": (sensible + specific) / 2,
            "relevance": _mean([j.relevance for j in judgments]), "judged": len(judgments)}


def cohen_kappa(x: list[int], y: list[int]) -> float | None:
    """Cohen's kappa of two judges' 0/1 labels of the same items; None where chance agreement is total."""
    n = len(x)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(x, y)) / n
    px, py = sum(x) / n, sum(y) / n
    chance = px * py + (1 - px) * (1 - py)
    return None if chance == 1 else (observed - chance) / (1 - chance)


def fleiss_kappa(rows: list[list[int]]) -> float | None:
    """Fleiss' kappa of 0/1 labels, one row per item, one label per judge (every row as long)."""
    if not rows or len(rows[0]) < 2:
        return None
    m, ones = len(rows[0]), [sum(r) for r in rows]
    p1 = sum(ones) / (len(rows) * m)
    chance = p1 ** 2 + (1 - p1) ** 2
    observed = _mean([(k * k + (m - k) ** 2 - m) / (m * (m - 1)) for k in ones])
    return None if chance == 1 else (observed - chance) / (1 - chance)


def agreement(names: list[str], judged: list[dict[str, Judgment]]) -> dict:
    """Per pair of judges, over the items both judged: percent agreement and Cohen's kappa on sensible and
    on specific; with more than two judges, their mean and Fleiss' kappa over the items all judged."""
    pairs = []
    for (na, a), (nb, b) in combinations(zip(names, judged), 2):
        common = sorted(set(a) & set(b))
        pair = {"judges": [na, nb], "items": len(common)}
        for f in ("sensible", "specific"):
            x, y = [getattr(a[i], f) for i in common], [getattr(b[i], f) for i in common]
            pair[f] = {"agreement": _mean([u == v for u, v in zip(x, y)]), "kappa": cohen_kappa(x, y)}
        pairs.append(pair)
    result: dict = {"pairs": pairs}
    if len(judged) > 2:
        common = sorted(set.intersection(*(set(j) for j in judged)))
        result["all"] = {"items": len(common), **{f: {
            "mean_pairwise_agreement": _mean([p[f]["agreement"] for p in pairs]),
            "mean_pairwise_kappa": _mean([p[f]["kappa"] for p in pairs]),
            "fleiss_kappa": fleiss_kappa([[getattr(j[i], f) for j in judged] for i in common])}
            for f in ("sensible", "specific")}}
    return result


def _judge_names(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    return [s if stems.count(s) == 1 else str(p) for s, p in zip(stems, paths)]


def score(key: str | Path | dict, judgments: list[str | Path]) -> dict:
    """Sensibleness, specificity and SSA per system and per data file (each judge's rates, then their
    mean over judges), the judges' agreement, and the items each judge left out (counted, listed)."""
    key = key if isinstance(key, dict) else load_key(key)
    items = key["items"]
    paths = [Path(p) for p in judgments]
    if not paths:
        raise ChitchatError("no judgment files")
    names = _judge_names(paths)
    judged = [read_judgments(p, items) for p in paths]
    answers = [(a["system"], a["data"], i) for i, it in items.items() for a in it["answers"]]

    def figures(ids: list[str]) -> dict:
        by_judge = {n: _rates([got[i] for i in ids if i in got]) for n, got in zip(names, judged)
                    if any(i in got for i in ids)}
        mean = {f: _mean([r[f] for r in by_judge.values()]) for f in FIGURES}
        return {**mean, "n": len(ids), "by_judge": by_judge}

    systems = {s: figures([i for sys, _, i in answers if sys == s]) for s in key["systems"]}
    data = {d: {s: figures([i for sys, dd, i in answers if sys == s and dd == d]) for s in key["systems"]
                if any(sys == s and dd == d for sys, dd, _ in answers)} for d in key["data"]}
    return {
        "items": len(items), "answers": len(answers), "contexts": key["contexts"],
        "judges": [{"name": n, "path": str(p), "judged": len(got), "missing": len(items) - len(got),
                    "missing_ids": sorted(set(items) - set(got))} for n, p, got in zip(names, paths, judged)],
        "systems": systems, "data": data, "agreement": agreement(names, judged),
    }


# -- the report --------------------------------------------------------------------------------------

def _fmt(value, fmt: str = "{:.3f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _row(head: list[str], fig: dict, relevance: bool) -> str:
    cells = head + [_fmt(fig[f]) for f in ("sensible", "specific", "ssa")]
    cells += [_fmt(fig["relevance"], "{:.2f}")] if relevance else []
    return "| " + " | ".join(cells + [str(fig["n"])]) + " |"


def report_markdown(report: dict) -> str:
    """The report's tables: per system, per data file and system, SSA by judge, the judges' agreement."""
    rel = any(f["relevance"] is not None for f in report["systems"].values())
    cols = " sensible | specific | SSA |" + (" relevance |" if rel else "") + " n |"
    align = " ---: |" * (4 + rel)
    judges = report["judges"]
    missing = [f"{j['name']} {j['missing']}" for j in judges if j["missing"]]
    md = ["# Judged evaluation (SSA)", "",
          f"{report['items']} items ({report['answers']} replies to {report['contexts']} contexts), "
          f"{len(judges)} judge(s): {', '.join(j['name'] for j in judges)}; items not judged: "
          f"{', '.join(missing) or 'none'}. Rates are the mean over judges; a reply that is not sensible is "
          "not specific; SSA is the mean of the two; n counts replies.", "",
          "| system |" + cols, "| --- |" + align]
    md += [_row([s], f, rel) for s, f in report["systems"].items()]
    md += ["", "Per data file:", "", "| data | system |" + cols, "| --- | --- |" + align]
    md += [_row([d, s], f, rel) for d, by_system in report["data"].items() for s, f in by_system.items()]
    if len(judges) > 1:
        names = [j["name"] for j in judges]
        md += ["", "SSA by judge:", "", "| system | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
        md += [f"| {s} | " + " | ".join(_fmt(f["by_judge"].get(n, {}).get("ssa")) for n in names) + " |"
               for s, f in report["systems"].items()]
        md += ["", "Agreement between judges (items both judged):", "",
               "| judges | items | sensible: agreement | sensible: kappa | specific: agreement | specific: kappa |",
               "| --- |" + " ---: |" * 5]
        md += [f"| {' / '.join(p['judges'])} | {p['items']} | {_fmt(p['sensible']['agreement'], '{:.1%}')} | "
               f"{_fmt(p['sensible']['kappa'])} | {_fmt(p['specific']['agreement'], '{:.1%}')} | "
               f"{_fmt(p['specific']['kappa'])} |" for p in report["agreement"]["pairs"]]
        every = report["agreement"].get("all")
        if every:
            md += ["", f"All {len(judges)} judges, {every['items']} items judged by all: " + "; ".join(
                f"{f}: Fleiss' kappa {_fmt(every[f]['fleiss_kappa'])}, mean pairwise kappa "
                f"{_fmt(every[f]['mean_pairwise_kappa'])}" for f in ("sensible", "specific")) + "."]
    md += ["", "Protocol and published anchors: docs/evaluation.md, \"Judged evaluation (SSA)\".", ""]
    return "\n".join(md)


def write_report(report: dict, out: str | Path) -> None:
    """report.md and report.json into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(report_markdown(report), encoding="utf-8")
