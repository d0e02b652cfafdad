"""`chitchat index`: the command end to end (in process, through the real argument parser)."""

import json

from chitchat.cli import main
from chitchat.retrieval import ResponseIndex, tokenizer_identity
from support import CORPUS, ROOT


def test_the_command_builds_an_index_with_a_holdout(tmp_path, capsys):
    model = ROOT / "models" / "default" / "dialogue"
    out = tmp_path / "index"
    assert main(["index", str(CORPUS), "--output", str(out), "--model", str(model), "--holdout-every", "4",
                 "--max-df", "1", "--history-weight", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "indexed" in printed and "MB on disk" in printed and "holdout.jsonl" in printed
    index = ResponseIndex.load(out, tokenizer=tokenizer_identity(model))
    assert index.config.history_weight == 0.5 and index.meta["inputs"] == [str(CORPUS)]
    held = [json.loads(line)["dialog"] for line in (out / "holdout.jsonl").read_text(encoding="utf-8").splitlines()]
    assert held and index.meta["held_out_dialogues"] == len(held)
    # built again: replaced whole
    assert main(["index", str(CORPUS / "pairs.tsv"), "-o", str(out), "--max-df", "1"]) == 0
    assert len(ResponseIndex.load(out)) == 4 and not (out / "holdout.jsonl").exists()


def test_command_errors_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    for args in ([str(empty)], [str(tmp_path / "absent.txt")]):
        assert main(["index", *args, "-o", str(tmp_path / "ix")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("chitchat index: error: ") and "\n" not in err and args[0] in err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["index", str(CORPUS), "-o", str(tmp_path / "taken")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "taken" / "notes.txt").read_text(encoding="utf-8") == "mine"
