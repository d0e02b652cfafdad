"""chitchat.retrieval.pairs: corpora to (context, reply) pairs, what is left out, the hash holdout."""

from collections import Counter

from chitchat.retrieval import IndexConfig, PairStats, read_pairs
from chitchat.retrieval.pairs import dialogue_pairs, held_out
from support import CORPUS, write_jsonl


def test_each_utterance_after_the_first_is_a_reply_to_up_to_max_history_before_it():
    skipped = Counter()
    d = ["一", "二", "三", "四", "五"]
    pairs = list(dialogue_pairs(d, IndexConfig(max_history=2), skipped))
    assert pairs == [(("一",), "二"), (("一", "二"), "三"), (("二", "三"), "四"), (("三", "四"), "五")]
    assert not skipped


def test_long_replies_long_contexts_and_echoes_are_left_out_and_counted():
    cfg = IndexConfig(max_reply_chars=5, max_context_chars=6, max_history=3)
    skipped = Counter()
    d = ["很长很长很长的第一句话", "好的", "好的", "太长了的回答啊", "嗯", "你呢", "我"]
    pairs = list(dialogue_pairs(d, cfg, skipped, vocab_chars=frozenset("你好的呢嗯")))
    # the first "好的" answers an 11-character line, the second repeats it, the 7-character answer is too
    # long as a reply and then as the context of "嗯"; "我" is outside the vocabulary
    assert pairs == [(("好的", "长了的回答啊", "嗯"), "你呢")]  # earlier turns cut to their last 6 characters
    assert skipped == {"long_context": 2, "reply_repeats_context": 1, "long_reply": 1, "reply_outside_vocabulary": 1}


def test_read_pairs_normalises_drops_duplicates_and_counts_sources(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [
        {"dialog": ["你好！", "你 好 呀"]}, {"dialog": ["你好!", "你好呀", ""]}, {"dialog": ["只有一句"]},
    ])
    stats = PairStats()
    pairs = list(read_pairs([str(corpus), str(CORPUS / "pairs.tsv")], IndexConfig(), stats))
    assert pairs[0].context == ("你好!",) and pairs[0].reply == "你好呀" and pairs[0].source == str(corpus)
    assert stats.skipped["duplicate"] == 1 and stats.skipped["dialogue_under_2_utterances"] == 1
    assert stats.pairs == len(pairs) == 1 + 4 and stats.per_source[str(CORPUS / "pairs.tsv")] == 4
    assert "pairs 5" in stats.text()


def test_the_holdout_is_one_dialogue_in_n_by_content_whatever_the_order(tmp_path):
    dialogues = [[f"第{i}句", f"回答{i}"] for i in range(200)]
    assert 20 < sum(held_out(d, 5) for d in dialogues) < 60 and not any(held_out(d, 0) for d in dialogues)
    cfg = IndexConfig(holdout_every=5)
    kept = {}
    for name, order in (("a", dialogues), ("b", dialogues[::-1])):
        stats = PairStats()
        pairs = list(read_pairs([str(write_jsonl(tmp_path / f"{name}.jsonl", [{"dialog": d} for d in order]))], cfg, stats))
        kept[name] = {p.reply for p in pairs}
        assert len(pairs) + len(stats.held_out) == 200
        assert not kept[name] & {d[1] for d in stats.held_out}
    assert kept["a"] == kept["b"]
