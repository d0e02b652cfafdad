"""Helpers shared by the tests of `chitchat train` (the `dataset` fixture is in this folder's conftest.py):
synthetic dialogues, a dataset made from them, a tiny one-thread TrainConfig, a run's metrics and weights."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from support import ROOT

PAIRS = [
    ("你好", "你好呀,很高兴认识你"), ("今天天气怎么样", "今天天气很好,适合出去玩"), ("你喜欢吃什么", "我喜欢吃米饭和面条"),
    ("你在做什么", "我在看书呢"), ("周末去哪里玩", "我们去公园散步吧"), ("你会唱歌吗", "会一点,我喜欢唱歌"),
    ("晚饭吃了吗", "还没有,一起去吃吧"), ("你几岁了", "我今年二十岁"), ("你叫什么名字", "我叫小明"),
    ("明天见", "好的,明天见"), ("你喜欢运动吗", "喜欢,我每天跑步"), ("最近忙吗", "有点忙,工作很多"),
]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    return env


def synthetic_dialogues(n: int, seed: int = 0, pairs=PAIRS) -> list[list[str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        d = []
        for _ in range(rng.randint(1, 3)):
            q, a = rng.choice(pairs)
            d += [q, a]
        out.append(d)
    return out


def make_dataset(tmp: Path, name: str, dialogues, vocab: str | None = None, max_len: int = 64,
                 valid_fraction: float = 0.1) -> Path:
    from chitchat.tokens.preprocess import PreprocessConfig, preprocess

    src = tmp / f"{name}.json"
    src.write_text(json.dumps(dialogues, ensure_ascii=False), encoding="utf-8")
    kwargs = {"vocab": vocab} if vocab else {}
    preprocess(PreprocessConfig(inputs=[str(src)], output=tmp / name, max_len=max_len, valid_fraction=valid_fraction,
                                progress=False, **kwargs))
    return tmp / name


def config(data: Path, out: Path, **kw):
    from chitchat.training.config import TrainConfig

    base = dict(data=data, output=out, preset="tiny", batch_tokens=384, num_threads=1, progress=False, verbose=False)
    base.update(kw)
    return TrainConfig(**base)


def metrics(out: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def state_dict(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))
