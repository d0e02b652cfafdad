"""`chitchat eval` on random-weight tiny models and a small corpus: cases, perplexity, report files,
reproducibility, models side by side, MMI comparison, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from chitchat.cli import main
from chitchat.eval.evaluate import EvalConfig, build_cases, evaluate
from chitchat.engine.settings import ReplySettings
from chitchat.model.gpt2 import build_model, save_model
from chitchat.corpus.readers import ReadStats
from chitchat.tokens.tokenizer import DEFAULT_VOCAB, load_tokenizer

DIALOGUES = [
    ["你好", "你好呀,今天过得怎么样", "还不错,刚下班", "辛苦了"],
    ["晚饭吃什么", "吃面条吧"],
    ["周末去爬山吗", "好啊,几点出发", "早上八点"],
    ["在吗"],  # one utterance: no test case
]
N_CASES = 3 + 1 + 2
SAMPLING = ["--candidates", "3", "--max-len", "8", "--topk", "8", "--negatives", "2"]  # 2: the data is small


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_models")
    tokenizer = load_tokenizer(DEFAULT_VOCAB)
    for name, seed in (("alpha", 1), ("beta", 2), ("mmi", 3)):
        save_model(build_model(tokenizer, "tiny", seed=seed), tokenizer, root / name)
    return root


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "dialogues.jsonl"
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in DIALOGUES), encoding="utf-8")
    return path


def run_eval(models, data, out, *extra) -> int:
    return main(["eval", "--model", str(models / "alpha"), "--data", str(data), "--output", str(out),
                 "--no-progress", *SAMPLING, *extra])


def test_every_reply_position_is_a_case_with_bounded_context(data):
    stats = ReadStats()
    cases = build_cases(EvalConfig(models=["m"], data=[str(data)], output=Path("x"),
                                   settings=ReplySettings(max_history_len=2)), stats)
    assert len(cases) == N_CASES
    assert [c.reference for c in cases[:3]] == ["你好呀,今天过得怎么样", "还不错,刚下班", "辛苦了"]
    assert cases[2].context == ["你好呀,今天过得怎么样", "还不错,刚下班"]  # the last 2 utterances only
    last = build_cases(EvalConfig(models=["m"], data=[str(data)], output=Path("x"), last_turn_only=True),
                       ReadStats())
    assert [c.reference for c in last] == ["辛苦了", "吃面条吧", "早上八点"]
    limited = build_cases(EvalConfig(models=["m"], data=[str(data)], output=Path("x"), limit=2), ReadStats())
    assert len(limited) == 2


def test_perplexity_is_exp_of_the_mean_teacher_forced_loss(models, data, tmp_path):
    """Recomputed with transformers alone: the reply tokens (and the closing [SEP]) are the labels."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report, _ = evaluate(EvalConfig(models=[str(models / "alpha")], data=[str(data)], output=tmp_path / "r",
                                    settings=ReplySettings(candidates=2, max_len=5, seed=42), progress=False, negatives=0))
    model = AutoModelForCausalLM.from_pretrained(models / "alpha").eval()
    tok = AutoTokenizer.from_pretrained(models / "alpha")
    cls, sep = tok.convert_tokens_to_ids("[CLS]"), tok.convert_tokens_to_ids("[SEP]")
    total, count, chars = 0.0, 0, 0
    for d in DIALOGUES:
        for i in range(1, len(d)):
            context = [cls]
            for u in d[max(0, i - 3):i]:
                context += tok(u, add_special_tokens=False)["input_ids"] + [sep]
            reply = tok(d[i], add_special_tokens=False)["input_ids"] + [sep]
            ids = torch.tensor([context + reply])
            labels = torch.tensor([[-100] * len(context) + reply])
            with torch.no_grad():
                loss = model(input_ids=ids, labels=labels).loss.item()
            total += loss * len(reply)
            count += len(reply)
            chars += len(d[i])
    system = report["systems"]["alpha"]
    assert system["perplexity_token"] == pytest.approx(math.exp(total / count), rel=1e-4)
    assert system["perplexity_char"] == pytest.approx(math.exp(total / chars), rel=1e-4)
    assert system["perplexity_token"] > 1000  # random weights over 8,000 tokens: near-uniform


def test_report_files_exist_parse_and_a_rerun_is_identical(models, data, tmp_path, capsys):
    assert run_eval(models, data, tmp_path / "one", "--mmi-model", str(models / "mmi"), "--compare-mmi") == 0
    stdout = capsys.readouterr().out
    assert "| perplexity / token |" in stdout and "cases/s" in stdout
    report = json.loads((tmp_path / "one" / "report.json").read_text(encoding="utf-8"))
    assert report["cases"] == N_CASES
    assert list(report["systems"]) == ["alpha", "alpha +mmi"]
    for key in ("bleu1_char", "bleu2_char", "bleu4_char", "bleu1_word", "bleu2_word", "bleu4_word",
                "distinct1_char", "distinct2_char", "distinct1_word", "distinct2_word", "f1_char",
                "tfidf_cosine", "avg_len_chars", "empty_rate", "repeat_3gram_rate", "perplexity_token",
                "perplexity_char"):
        assert math.isfinite(report["systems"]["alpha +mmi"][key]), key
    assert report["settings"]["seed"] == 42 and report["settings"]["reply"]["candidates"] == 3
    assert report["models"][0]["path"].endswith("alpha") and len(report["models"][0]["hash"]) == 16
    assert report["mmi_model"]["path"].endswith("mmi")
    assert report["data"][0]["sha256"] and report["versions"]["torch"]
    assert report["skipped"]["dialogues"] == {"fewer_than_2_utterances": 1}
    md = (tmp_path / "one" / "report.md").read_text(encoding="utf-8")
    assert "| metric | alpha | alpha +mmi |" in md and "| BLEU-4 (word) |" in md
    cases = [json.loads(line) for line in (tmp_path / "one" / "cases.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(cases) == N_CASES
    for c in cases:
        candidates = c["models"]["alpha"]["candidates"]
        texts = [cand["text"] for cand in candidates]
        assert len(texts) == 3
        # both rankings chose among the same candidates: MMI the lowest MMI score, the other the lowest NLL
        assert c["systems"]["alpha +mmi"]["reply"] == min(candidates, key=lambda cand: cand["scores"]["mmi"])["text"]
        assert c["systems"]["alpha"]["reply"] == min(candidates, key=lambda cand: cand["scores"]["likelihood"])["text"]
        assert {"context", "reference", "source"} <= set(c)
        assert c["models"]["alpha"]["reference_nll_per_token"] > 0

    assert run_eval(models, data, tmp_path / "two", "--mmi-model", str(models / "mmi"), "--compare-mmi") == 0
    assert (tmp_path / "one" / "report.json").read_bytes() == (tmp_path / "two" / "report.json").read_bytes()
    assert (tmp_path / "one" / "cases.jsonl").read_bytes() == (tmp_path / "two" / "cases.jsonl").read_bytes()
    assert run_eval(models, data, tmp_path / "three", "--seed", "7") == 0
    other = json.loads((tmp_path / "three" / "report.json").read_text(encoding="utf-8"))
    assert other["settings"]["seed"] == 7


def test_several_models_side_by_side(models, data, tmp_path):
    assert main(["eval", "--model", str(models / "alpha"), "--model", str(models / "beta"),
                 "--mmi-model", str(models / "mmi"), "--compare-mmi", "--data", str(data),
                 "--output", str(tmp_path), "--no-progress", *SAMPLING]) == 0
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert list(report["systems"]) == ["alpha", "alpha +mmi", "beta", "beta +mmi"]
    # different weights, same references: different perplexities
    assert report["systems"]["alpha"]["perplexity_token"] != report["systems"]["beta"]["perplexity_token"]
    assert "| metric | alpha | alpha +mmi | beta | beta +mmi |" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_reference_of_unknown_characters_is_a_counted_skip(models, tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("你好\n\U0001d11e\U0001d11e\n\n在吗\n在的\n", encoding="utf-8")
    assert run_eval(models, data, tmp_path / "out") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["cases"] == 1 and report["skipped"]["cases"] == {"reference_all_unknown": 1}
    assert "reference_all_unknown" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")


def test_no_usable_case_is_one_clear_error(models, tmp_path, capsys):
    data = tmp_path / "d.txt"
    data.write_text("只有一句\n\n也只有一句\n", encoding="utf-8")
    assert run_eval(models, data, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no usable test case" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()


def test_mmi_model_from_another_vocabulary_is_refused(models, data, tmp_path, capsys):
    from transformers import PreTrainedTokenizerFast  # noqa: F401 (the tokenizer below is one)

    vocab = tmp_path / "vocab.txt"
    tokens = DEFAULT_VOCAB.read_text(encoding="utf-8").splitlines()
    vocab.write_text("\n".join(tokens[:-1] + ["\U0001d11e"]) + "\n", encoding="utf-8")
    other = load_tokenizer(vocab)
    save_model(build_model(other, "tiny", seed=4), other, tmp_path / "other_mmi")
    assert run_eval(models, data, tmp_path / "out", "--mmi-model", str(tmp_path / "other_mmi")) == 2
    err = capsys.readouterr().err
    assert "vocabulary" in err and "Traceback" not in err


def test_bad_options_are_one_line_errors(models, data, tmp_path, capsys):
    assert run_eval(models, data, tmp_path / "o", "--compare-mmi") == 2
    assert "--compare-mmi needs --mmi-model" in capsys.readouterr().err
    assert run_eval(models, data, tmp_path / "o", "--limit", "0") == 2
    assert run_eval(models, tmp_path / "missing.txt", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
