"""`chitchat train`'s command line: TrainConfig's flags, and --resume keeping what is not given."""

from __future__ import annotations

import json
from pathlib import Path

from chitchat.cli import build_parser
from chitchat.training.config import RUN_CONFIG, TrainConfig
from chitchat.commands.train import config_from_args


def parse(*argv: str):
    return build_parser("train").parse_args(["train", *argv])


def test_flags_map_to_fields_with_the_dataclass_defaults(tmp_path):
    cfg = config_from_args(parse("--data", "d", "-o", str(tmp_path / "run"), "--threads", "3", "--mmi",
                                 "--patience", "0", "--no-progress", "--quiet", "--valid-data", "v"))
    assert cfg.data == Path("d") and cfg.output == tmp_path / "run" and cfg.valid_data == Path("v")
    assert cfg.num_threads == 3 and cfg.mmi and cfg.patience is None
    assert cfg.progress is False and cfg.verbose is False
    d = TrainConfig(data=Path("d"), output=Path("o"))
    assert (cfg.lr, cfg.epochs, cfg.schedule, cfg.preset) == (d.lr, d.epochs, d.schedule, d.preset)
    assert config_from_args(parse("--data", "d", "-o", "o")).progress is None


def test_resume_keeps_the_runs_values_unless_given(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    saved = {"lr": 0.002, "epochs": 4, "seed": 7, "preset": "small", "mmi": True, "device": "cuda"}
    (run / RUN_CONFIG).write_text(json.dumps({"config": saved}))
    cfg = config_from_args(parse("--data", "d", "-o", str(run), "--resume"))
    assert (cfg.lr, cfg.epochs, cfg.seed, cfg.preset, cfg.mmi) == (0.002, 4, 7, "small", True)
    assert cfg.device is None  # the device may change on resume: not taken from the run
    # a value given is the command line's, even the default's (the trainer then refuses a changed lr)
    cfg = config_from_args(parse("--data", "d", "-o", str(run), "--resume", "--lr", "0.001", "--epochs", "6"))
    assert (cfg.lr, cfg.epochs, cfg.seed) == (0.001, 6, 7)


def test_help_shows_each_default_once():
    help_text = " ".join(build_parser("train")._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "peak learning rate (default: 0.001)" in help_text
    assert "--threads N" in help_text and "--progress, --no-progress" in help_text
    assert help_text.count("(default: 10)") == 2  # --epochs and --log-every
