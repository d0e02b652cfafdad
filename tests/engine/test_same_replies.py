"""Replies are unchanged by refactoring: the shipped model, fixed histories and seeds give the replies
recorded in data/golden_replies.json (recorded before the reply settings became one type)."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from chitchat.engine.engine import Engine
from chitchat.engine.sampler import Generators, seed_generator, shared_width
from chitchat.engine.settings import ReplySettings
from chitchat.files import REPO_ROOT

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden_replies.json").read_text(encoding="utf-8"))
MODEL = REPO_ROOT / "models" / "default"


@pytest.fixture(scope="module")
def shipped():
    if not (MODEL / "dialogue" / "config.json").is_file():
        pytest.skip("no shipped model in this checkout")
    return Engine.load(MODEL / "dialogue", MODEL / "mmi")


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: f"seed{c['seed']}-{c['ranking']}")
def test_the_same_seed_gives_the_recorded_replies(shipped, case):
    settings = ReplySettings(**case["sampling"], ranking=case["ranking"], seed=case["seed"])
    histories = GOLDEN["histories"]
    assert [r.text for r in shipped.replies(histories, settings)] == case["batch"]
    assert [shipped.reply(h, settings).text for h in histories[:3]] == case["single"]


@pytest.mark.parametrize("settings", [ReplySettings(), ReplySettings(candidates=1, ranking="likelihood"),
                                      ReplySettings(top_k=0, top_p=1.0, temperature=1.0)])
def test_a_seeded_history_gets_the_same_reply_in_any_batch(shipped, settings):
    """Each history drawing from its own generator (the server batches requests with their own
    seeds so): its reply is the one its seed gives alone."""
    histories = GOLDEN["histories"]
    alone = [shipped.reply(h, replace(settings, seed=100 + i)).text for i, h in enumerate(histories)]
    gens = Generators(seed_generator(100 + i) for i in range(len(histories)))
    assert [r.text for r in shipped.replies(histories, settings, generator=gens)] == alone
    assert shared_width(settings)
    assert not shared_width(ReplySettings(top_k=0, top_p=0.9))  # nucleus alone: widths depend on the batch
