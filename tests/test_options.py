"""chitchat.options: argparse arguments made from option() dataclass fields."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from chitchat.options import HelpFormatter
from chitchat.options import add_options, option, options_from_args, to_argv


@dataclass
class Demo:
    data: Path = option(help="dataset directory", aliases=("-d",))
    files: list[Path] = option(flag="FILE", nargs="*", help="input files", default_factory=list)
    epochs: int = option(10, help="passes over the data")
    lr: float = option(1e-3, help="learning rate")
    name: str | None = option(None, help="a name", metavar="NAME")
    top_k: int = option(8, flag="--topk", aliases=("--top-k",), metavar="K", help="top-k")
    schedule: str = option("cosine", choices=("cosine", "linear"), help="decay")
    sizes: list[int] = option(help="sizes", default_factory=lambda: [1, 2])
    mmi: bool = option(False, help="MMI")
    fused: bool = option(True, help="fused kernels")
    progress: bool | None = option(None, help="progress bar (default: only on a terminal)")
    hidden: int = option(5, help="not on the command line", cli=False)


def parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo", formatter_class=HelpFormatter)
    add_options(p, Demo, **kw)
    return p


def test_types_and_defaults():
    args = parser().parse_args(["--data", "d", "--epochs", "3", "--lr", "0.5", "--sizes", "4", "5"])
    cfg = options_from_args(Demo, args)
    assert cfg.data == Path("d") and isinstance(cfg.data, Path)
    assert cfg.epochs == 3 and cfg.lr == 0.5 and cfg.sizes == [4, 5]
    assert cfg.name is None and cfg.schedule == "cosine" and cfg.files == [] and cfg.hidden == 5
    assert not hasattr(args, "hidden")
    assert options_from_args(Demo, args, epochs=7, hidden=1).epochs == 7


def test_required_positional_nargs_aliases():
    p = parser()
    with pytest.raises(SystemExit):
        p.parse_args([])  # --data is required
    args = p.parse_args(["a.txt", "b.txt", "-d", "x", "--top-k", "3", "--name", "n"])
    assert args.files == [Path("a.txt"), Path("b.txt")]
    assert args.data == Path("x") and args.top_k == 3 and args.name == "n"
    assert p.parse_args(["-d", "x", "--topk", "4"]).top_k == 4
    with pytest.raises(SystemExit):
        p.parse_args(["-d", "x", "--schedule", "step"])
    with pytest.raises(SystemExit):
        p.parse_args(["-d", "x", "--epochs", "many"])


def test_booleans():
    p = parser()
    args = p.parse_args(["-d", "x"])
    assert (args.mmi, args.fused, args.progress) == (False, True, None)
    args = p.parse_args(["-d", "x", "--mmi", "--no-fused", "--no-progress"])
    assert (args.mmi, args.fused, args.progress) == (True, False, False)
    assert p.parse_args(["-d", "x", "--progress"]).progress is True
    with pytest.raises(SystemExit):
        p.parse_args(["-d", "x", "--no-mmi"])  # a False switch has no negation


def test_defaults_override_skip_group():
    p = parser(defaults={"epochs": 2}, skip=("lr",), group="demo options")
    args = p.parse_args(["-d", "x"])
    assert args.epochs == 2 and not hasattr(args, "lr")
    assert options_from_args(Demo, args).lr == 1e-3
    assert any(g.title == "demo options" for g in p._action_groups)
    with pytest.raises(TypeError):
        parser(defaults={"nope": 1})


def test_help_shows_each_default_once():
    text = " ".join(parser().format_help().split())
    assert "passes over the data (default: 10)" in text
    assert "learning rate (default: 0.001)" in text
    assert "--topk K, --top-k K" in text
    assert "--fused, --no-fused" in text
    assert "(default: None)" not in text and "MMI (default" not in text
    assert text.count("(default: 10)") == 1
    assert "FILE" in text and "not on the command line" not in text


@pytest.mark.parametrize("cfg", [
    Demo(data=Path("d")),
    Demo(data=Path("a b"), files=[Path("x"), Path("y")], epochs=3, lr=0.5, name="n", top_k=2, schedule="linear",
         sizes=[4], mmi=True, fused=False, progress=False),
    Demo(data=Path("d"), progress=True),
])
def test_to_argv_gives_the_arguments_that_parse_back_into_the_config(cfg):
    argv = to_argv(cfg)
    assert options_from_args(Demo, parser().parse_args(argv)) == cfg
    assert "--hidden" not in argv and "--epochs" not in to_argv(Demo(data=Path("d")))  # defaults are left out



@dataclass
class Outer:
    demo: Demo = option(help="a nested dataclass of options", default_factory=lambda: Demo(data=Path("d")))
    rounds: int = option(1, help="rounds")


def test_to_argv_spells_a_nested_dataclass_with_its_own_flags():
    cfg = Outer(demo=Demo(data=Path("e"), epochs=2, mmi=True), rounds=3)
    p = argparse.ArgumentParser()
    add_options(p, Outer)
    assert options_from_args(Outer, p.parse_args(to_argv(cfg))) == cfg
