"""`chitchat judge`: blind judging sheets of systems' replies (`judge sheet`), and the judges' judgments
read back into sensibleness, specificity and SSA per system and per data file (`judge score`).

The protocol, the file formats and published figures to compare with: docs/evaluation.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chitchat.errors import ChitchatError
from chitchat.eval.judging import HUMAN, read_cases, read_replies, report_markdown, score, write_report, write_sheet
from chitchat.options import HelpFormatter, add_options, option, options_from_args


@dataclass
class SheetOptions:
    output: Path = option(aliases=("-o",), metavar="DIR",
                          help="new folder for the sheets, instructions.md and key.json (keep the key from the judges)")
    cases: list[str] = option(metavar="[LABEL=]FILE", default_factory=list,
                              help="cases.jsonl of chitchat eval: each column (model x ranking) is a system, "
                                   "named LABEL/column when a label is given (to tell runs apart)")
    replies: list[Path] = option(metavar="FILE", default_factory=list,
                                 help='replies made elsewhere, JSON lines {"system", "data", "context": [...], "reply"}')
    human: bool = option(True, help=f"each case's reference in --cases as the system '{HUMAN}' (calibrates the judges)")
    systems: list[str] = option(metavar="NAME", default_factory=list,
                                help=f"only these systems (and '{HUMAN}')")
    judges: int = option(2, metavar="K", help="write K copies of the sheet, each in its own order, one per judge")
    contexts: int | None = option(None, metavar="N", help="judge N contexts drawn at random (default: all)")
    per_data: bool = option(False, help="draw --contexts N from each data file rather than N in all")
    seed: int = option(1, help="seed of the drawing, the item order and the ids")


@dataclass
class ScoreOptions:
    key: Path = option(metavar="FILE", help="key.json of the sheet")
    judgments: list[Path] = option(flag="judgments", nargs="+", metavar="JUDGMENTS",
                                   help="one JSON-lines file per judge: id, sensible, specific, relevance (optional)")
    output: Path | None = option(None, aliases=("-o",), metavar="DIR",
                                 help="folder for report.md and report.json (default: the key's folder)")


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, cls, text in (("sheet", SheetOptions, "write a blind judging sheet of the systems' replies, and its key"),
                            ("score", ScoreOptions, "sensibleness, specificity and SSA per system and per data "
                                                    "file from the judges' files, with their agreement")):
        add_options(sub.add_parser(name, formatter_class=HelpFormatter, help=text, description=text), cls)


def _sheet(o: SheetOptions) -> int:
    if not o.cases and not o.replies:
        raise ChitchatError("nothing to judge: give --cases (chitchat eval's cases.jsonl) or --replies (JSON lines)")
    answers, inputs = [], []
    for spec in o.cases:
        label, _, path = spec.partition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
        answers += read_cases(path, label or None, o.human)
        inputs.append(path)
    for path in o.replies:
        answers += read_replies(path)
        inputs.append(path)
    if o.systems:
        unknown = set(o.systems) - {a.system for a in answers}
        if unknown:
            have = ", ".join(sorted({a.system for a in answers}))
            raise ChitchatError(f"--systems: no replies of {', '.join(sorted(unknown))} (have: {have})")
        answers = [a for a in answers if a.system in o.systems or a.system == HUMAN]
    key = write_sheet(answers, o.output, judges=o.judges, contexts=o.contexts, per_data=o.per_data, seed=o.seed,
                      inputs=inputs)
    print(f"{len(key['items'])} items: {key['answers']} replies of {len(key['systems'])} systems "
          f"({', '.join(key['systems'])}) to {key['contexts']} contexts of {len(key['data'])} data file(s); "
          f"identical pairs merged: {key['answers'] - len(key['items'])}; repeated replies dropped: "
          f"{key['repeats_dropped']}")
    print(f"wrote {o.output}/instructions.md, sheet.jsonl/.md, sheet_judge1..{o.judges}.jsonl/.md and key.json "
          "(judges get instructions.md and their sheet only)")
    return 0


def _score(o: ScoreOptions) -> int:
    report = score(o.key, o.judgments)
    out = o.output or o.key.parent
    write_report(report, out)
    print(report_markdown(report))
    print(f"wrote {out}/report.md and report.json")
    return 0


def run(args) -> int:
    if args.action == "sheet":
        return _sheet(options_from_args(SheetOptions, args))
    return _score(options_from_args(ScoreOptions, args))
