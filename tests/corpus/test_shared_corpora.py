"""The real corpora beside the project (../shared/corpora), all at once; skipped where absent."""

import json

import numpy as np

from chitchat.tokens.dataset import load_dataset, read_manifest
from chitchat.tokens.preprocess import PreprocessConfig, preprocess
from support import shared_corpora


def count_independently(root):
    """Dialogues and utterances of every JSON file, by json.load."""
    dialogues = utterances = 0
    files = sorted(root.rglob("*.json"))
    for f in files:
        data = json.loads(f.read_text(encoding="utf-8"))
        assert isinstance(data, list), f
        dialogues += len(data)
        for d in data:
            utterances += len(d["messages"]) if isinstance(d, dict) else len(d)
    return len(files), dialogues, utterances


def test_all_shared_corpora_at_once(tmp_path):
    root = shared_corpora()
    n_files, n_dialogues, n_utterances = count_independently(root)
    assert (n_files, n_dialogues) == (5, 1000 + 200 + 3 * 150)
    summary = preprocess(PreprocessConfig(inputs=[str(root / "lccc_toy"), str(root / "kdconv")],
                                          output=tmp_path / "ds", progress=False))
    r = summary.read
    assert r.files == n_files and not r.errors
    assert r.read == n_dialogues == 1650
    assert r.kept == r.read and not r.skipped
    assert summary.utterances + summary.empty_utterances == n_utterances
    assert summary.truncated_utterances == 0
    assert summary.unk_rate < 0.001, f"[UNK] rate {100 * summary.unk_rate:.3f}% of {summary.tokens} characters"
    m = read_manifest(tmp_path / "ds")
    assert m["counts"]["dialogues"] == 1650 and m["counts"]["unk_rate"] < 0.001
    # KdConv dialogues are long: they become several windows each, none over max_len
    owner = np.fromfile(tmp_path / "ds" / "dialogues.bin", dtype=np.int64)
    windows_per_dialogue = np.bincount(owner, minlength=1650)
    assert windows_per_dialogue.min() >= 1
    assert windows_per_dialogue[1200:].mean() > 2  # the KdConv ones (read after LCCC)
    assert m["window_lengths"]["max"] <= m["max_len"]
    assert len(load_dataset(tmp_path / "ds", "train")) + len(load_dataset(tmp_path / "ds", "valid")) == summary.windows
