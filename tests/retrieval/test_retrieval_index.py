"""chitchat.retrieval.index: building on the sample corpora, lookups, the history weight, the files and
their one-line errors."""

import io
import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from chitchat.errors import ChitchatError
from chitchat.retrieval import IndexConfig, ResponseIndex, tokenizer_identity
from chitchat.retrieval.index import ARRAYS, META, TEXTS
from chitchat.tokens.tokenizer import read_vocab, vocab_hash
from support import CORPUS, ROOT, VOCAB, shared_corpora, write_jsonl

SMALL = IndexConfig()
QUERIES = [["我饿了"], ["你好"], ["周末有什么安排吗?"], ["今天好累啊"], ["晚饭吃什么"], ["天气怎么样"], []]


@pytest.fixture(scope="module")
def samples():
    """The index of every sample corpus in corpus/."""
    return ResponseIndex.from_corpora([str(CORPUS)], SMALL)[0]


def test_the_obvious_pair_comes_first(samples):
    hits = samples.query(["我饿了"], k=3)
    assert hits[0].reply == "去吃点东西吧" and hits[0].context == ("我饿了",)
    assert hits[0].source.endswith("pairs.tsv") and hits[0].score > 0.99
    assert hits[0].score >= hits[1].score >= hits[2].score
    # raw text is normalised as the index was: full-width punctuation, spaces
    assert samples.query(["周末 有什么安排吗？"], k=1)[0].reply == "想去爬山,你要一起吗?"


def test_replies_are_distinct_and_k_is_respected(samples):
    for context in QUERIES:
        hits = samples.query(context, k=5)
        assert len(hits) <= 5 and len({h.reply for h in hits}) == len(hits)
    assert samples.query([], k=5) == [] and samples.query(["。。。"], k=5) == []
    assert samples.query(["我饿了"], k=0) == []


def test_earlier_turns_break_a_tie_of_the_last_utterance(tmp_path):
    corpus = write_jsonl(tmp_path / "tie.jsonl", [
        {"dialog": ["我们明天去爬山吧", "然后呢", "在山顶看日出"]},
        {"dialog": ["今天晚饭吃火锅吧", "然后呢", "吃完再去看电影"]},
        {"dialog": ["随便聊聊天气", "今天下雨了"]},
    ])
    index = ResponseIndex.from_corpora([str(corpus)], SMALL)[0]
    assert index.query(["晚饭吃火锅怎么样", "然后呢"], k=1)[0].reply == "吃完再去看电影"
    assert index.query(["爬山累不累", "然后呢"], k=1)[0].reply == "在山顶看日出"
    # without the earlier turns the two tie on the last utterance: the earlier pair wins
    for context in (["晚饭吃火锅怎么样", "然后呢"], ["爬山累不累", "然后呢"]):
        hits = index.query(context, k=2, history_weight=0)
        assert [h.reply for h in hits] == ["在山顶看日出", "吃完再去看电影"] and hits[0].score == hits[1].score
    # the last utterance dominates: a pair whose earlier turn matches cannot beat one whose last does
    assert index.query(["今天晚饭吃火锅吧", "随便聊聊天气"], k=1)[0].reply == "今天下雨了"


def test_a_round_trip_through_the_files_gives_identical_results(samples, tmp_path):
    samples.save(tmp_path / "ix")
    loaded = ResponseIndex.load(tmp_path / "ix")
    assert len(loaded) == len(samples) and loaded.meta["counts"] == samples.meta["counts"]
    assert loaded.query_many(QUERIES, k=4) == samples.query_many(QUERIES, k=4)
    assert loaded.query_many(QUERIES, k=4) == [loaded.query(c, k=4) for c in QUERIES]
    names = sorted(f.name for f in (tmp_path / "ix").iterdir())
    assert names == sorted(["meta.json", "terms.txt", "texts.txt"] + [f"{a}.npy" for a in ARRAYS])
    assert all(np.load(tmp_path / "ix" / f"{a}.npy", allow_pickle=False).dtype != object for a in ARRAYS)
    lines = (tmp_path / "ix" / TEXTS).read_text(encoding="utf-8").splitlines()  # every utterance once, readable
    assert "去吃点东西吧" in lines and len(lines) == len(set(lines)) == samples.meta["counts"]["texts"]
    samples.save(tmp_path / "ix")  # an index is replaced whole
    assert ResponseIndex.load(tmp_path / "ix").query(["我饿了"], 1) == samples.query(["我饿了"], 1)


def one_line_error(fn, *names: str) -> str:
    with pytest.raises(ChitchatError) as e:
        fn()
    message = str(e.value)
    assert "\n" not in message and all(n in message for n in names), message
    return message


@pytest.fixture
def saved(samples, tmp_path):
    samples.save(tmp_path / "ix")
    return tmp_path / "ix"


def test_missing_index_files_name_the_file(saved, tmp_path):
    one_line_error(lambda: ResponseIndex.load(tmp_path / "nowhere"), "nowhere")
    (tmp_path / "empty").mkdir()
    one_line_error(lambda: ResponseIndex.load(tmp_path / "empty"), str(tmp_path / "empty" / META))
    (saved / "reply.npy").unlink()
    one_line_error(lambda: ResponseIndex.load(saved), str(saved / "reply.npy"), "missing")


def rewrite(saved, name: str, data: bytes) -> None:
    """Replace one file of an index, and its size in meta.json (as a file that was written so would be)."""
    (saved / name).write_bytes(data)
    meta = json.loads((saved / META).read_text(encoding="utf-8"))
    meta["files"][name] = len(data)
    (saved / META).write_text(json.dumps(meta), encoding="utf-8")


def test_truncated_or_corrupt_files_name_the_file(saved):
    for name in ("postings_weights.npy", TEXTS):
        f = saved / name
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
        one_line_error(lambda: ResponseIndex.load(saved), str(f), "truncated")
        f.write_bytes(data)
    pairs = saved / "postings_pairs.npy"
    data = pairs.read_bytes()
    rewrite(saved, pairs.name, b"\0" * len(data))  # the right size, not an array
    one_line_error(lambda: ResponseIndex.load(saved), str(pairs), "corrupt")
    rewrite(saved, pairs.name, data[:-4])  # cut short, with its size recorded: fewer bytes than its header says
    one_line_error(lambda: ResponseIndex.load(saved), str(pairs), "corrupt")

    def save_array(a):
        buffer = io.BytesIO()
        np.save(buffer, a)
        rewrite(saved, pairs.name, buffer.getvalue())

    good = np.load(io.BytesIO(data))
    save_array(good[:-1])  # one posting fewer: the offsets no longer fit
    one_line_error(lambda: ResponseIndex.load(saved), str(saved / "postings_indptr.npy"), "does not fit")
    save_array(np.full_like(good, 10 ** 6))  # pair numbers past the end
    one_line_error(lambda: ResponseIndex.load(saved), str(pairs), "pair numbers")


def test_wrong_version_broken_meta_and_another_tokenizer_are_refused(saved):
    meta_path = saved / META
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta_path.write_text(json.dumps({**meta, "format_version": 99}), encoding="utf-8")
    one_line_error(lambda: ResponseIndex.load(saved), str(meta_path), "format 99")
    meta_path.write_text('{"kind": ', encoding="utf-8")
    one_line_error(lambda: ResponseIndex.load(saved), str(meta_path))
    meta_path.write_text(json.dumps({**meta, "tokenizer": "0123456789abcdef"}), encoding="utf-8")
    one_line_error(lambda: ResponseIndex.load(saved, tokenizer=tokenizer_identity(VOCAB)), str(meta_path), "0123456789abcdef")
    assert len(ResponseIndex.load(saved)) > 0  # no tokenizer asked for: no check
    meta_path.write_text(json.dumps({**meta, "tokenizer": tokenizer_identity(VOCAB)}), encoding="utf-8")
    assert len(ResponseIndex.load(saved, tokenizer=tokenizer_identity(VOCAB))) > 0


def test_tokenizer_identity_is_the_projects_vocabulary_hash():
    model = ROOT / "models" / "default" / "dialogue"
    assert tokenizer_identity(model) == tokenizer_identity(model / "tokenizer.json")
    vocab = Tokenizer.from_file(str(model / "tokenizer.json")).get_vocab()  # what AutoTokenizer reads
    assert tokenizer_identity(model) == vocab_hash(sorted(vocab, key=vocab.get))
    assert tokenizer_identity(VOCAB) == vocab_hash(read_vocab(VOCAB))
    one_line_error(lambda: tokenizer_identity(ROOT / "nowhere"), "nowhere")


def test_a_model_records_its_tokenizer_and_keeps_replies_it_can_spell(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"dialog": ["你好", "你好呀"]}, {"dialog": ["你是谁", "我是\U0001F916"]}])
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(read_vocab(VOCAB)), encoding="utf-8")
    index, stats = ResponseIndex.from_corpora([str(corpus)], SMALL, model=vocab)
    assert index.meta["tokenizer"] == tokenizer_identity(VOCAB)
    assert len(index) == 1 and stats.skipped["reply_outside_vocabulary"] == 1


def test_an_empty_corpus_is_a_one_line_error_naming_the_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    one_line_error(lambda: ResponseIndex.from_corpora([str(empty)], SMALL), str(empty))
    lonely = write_jsonl(tmp_path / "lonely.jsonl", [{"dialog": ["只有一句"]}, {"dialog": ["", "空"]}])
    one_line_error(lambda: ResponseIndex.from_corpora([str(lonely)], SMALL), str(lonely), "no (context, reply) pair")
    one_line_error(lambda: ResponseIndex.from_corpora([str(tmp_path / "absent.jsonl")], SMALL), "absent.jsonl")


def test_bad_settings_are_one_line_errors():
    for bad in (IndexConfig(max_history=0), IndexConfig(words=False, char_ngrams=[]), IndexConfig(max_df=0)):
        one_line_error(lambda: ResponseIndex.from_corpora([str(CORPUS)], bad))


def test_a_real_corpus(tmp_path):
    """Xiaoai pairs (4,040 casual exchanges): its own queries come back with one of their replies."""
    corpus = shared_corpora() / "open" / "xiaoai_pairs.jsonl.xz"
    index, stats = ResponseIndex.from_corpora([str(corpus)], IndexConfig())
    assert 3_900 < len(index) <= 4_040 and not stats.read.errors
    index.save(tmp_path / "ix")
    loaded = ResponseIndex.load(tmp_path / "ix")
    hits = loaded.query(["你的声音好好听啊"], k=5)
    assert len(hits) == 5 and all(h.context == ("你的声音好好听啊",) for h in hits)
