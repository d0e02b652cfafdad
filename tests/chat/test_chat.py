"""The chat REPL and session: non-terminal mode, prompt_toolkit pipe input, slash commands, transcript."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chitchat.chat.repl import Repl, run_terminal
from chitchat.commands.chat import run
from chitchat.cli import build_parser
from chitchat.chat.session import Session
from chitchat.engine.settings import ReplySettings

ROOT = Path(__file__).resolve().parents[2]


def chat(model_dirs, lines: list[str], *extra: str, transcript: Path | None = None) -> list[str]:
    """Run `chitchat chat` in non-terminal mode; the output lines."""
    argv = ["chat", "--model", str(model_dirs[0]), "--mmi-model", str(model_dirs[1]), "--max-len", "8", *extra]
    if transcript is not None:
        argv += ["--transcript", str(transcript)]
    out = io.StringIO()
    assert run(build_parser().parse_args(argv), stdin=io.StringIO("".join(l + "\n" for l in lines)), stdout=out) == 0
    text = out.getvalue()
    assert "\x1b" not in text and "you>" not in text  # no colours, no prompts
    return text.splitlines()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class Capture:
    def __init__(self):
        self.items: list[tuple[str, str]] = []

    def __call__(self, text: str, kind: str) -> None:
        self.items.append((kind, text))

    def of(self, kind: str) -> list[str]:
        return [t for k, t in self.items if k == kind]


# -- non-terminal mode ----------------------------------------------------------------------------

def test_one_reply_line_per_input_line(model_dirs, tmp_path):
    lines = ["你好", "", "   ", "吃饭了吗?", "长" * 10_000, "😀 hello world, ça va?", "/quit", "never read"]
    out = chat(model_dirs, lines, "--seed", "3", transcript=tmp_path / "t.jsonl")
    assert len(out) == 4 and all(line.strip() for line in out)  # blank lines get no reply
    records = read_jsonl(tmp_path / "t.jsonl")
    assert [r["user"] for r in records] == ["你好", "吃饭了吗?", "长" * 10_000, "😀 hello world, ça va?"]
    assert [r["bot"] for r in records] == out
    first = records[0]
    assert set(first) >= {"time", "user", "bot", "candidates", "chosen", "ranking", "settings", "model", "mmi_model"}
    assert first["model"] == str(model_dirs[0]) and first["mmi_model"] == str(model_dirs[1])
    assert first["ranking"] == "mmi" and len(first["candidates"]) == 5
    assert all(isinstance(c["scores"]["mmi"], float) and isinstance(c["scores"]["likelihood"], float)
               and c["source"] == "sampled" for c in first["candidates"])
    assert first["settings"]["max_len"] == 8 and first["settings"]["seed"] == 3


def test_same_seed_same_replies(model_dirs):
    lines = ["你好", "今天天气怎么样", "再见"]
    assert chat(model_dirs, lines, "--seed", "5") == chat(model_dirs, lines, "--seed", "5")
    assert chat(model_dirs, lines, "--seed", "5") != chat(model_dirs, lines, "--seed", "6")


def test_end_of_input_ends_and_writes_the_default_transcript(model_dirs, data_home):
    out = chat(model_dirs, ["你好"])
    assert len(out) == 1
    [path] = (data_home / "transcripts").glob("chat-*.jsonl")
    assert read_jsonl(path)[0]["bot"] == out[0]


def test_slash_commands_in_non_terminal_mode(model_dirs, tmp_path):
    lines = [
        "/help", "你好", "/history", "/candidates",
        "/set topk 3", "/set temperature 0.7", "/set candidates 2", "/set max_history 1", "/set mmi off",
        "第二句", "/candidates", "/set", "/set bogus 1", "/set topk many", "/nonsense",
        f"/save {tmp_path / 'saved.jsonl'}", "/reset", "/history", "/quit",
    ]
    out = "\n".join(chat(model_dirs, lines, "--seed", "1", transcript=tmp_path / "t.jsonl"))
    assert "/candidates" in out and "/set NAME VALUE" in out  # /help
    assert "you: 你好\nbot: " in out  # /history
    assert out.count("ranked by mmi") == 1 and out.count("ranked by likelihood") == 1
    assert "top_k 3" in out and "temperature 0.7" in out and "candidates 2" in out and "ranking likelihood" in out
    assert "max_history_len 1" in out
    assert "error: unknown setting 'bogus'" in out and "error: top_k takes an integer" in out
    assert "error: unknown command /nonsense" in out
    assert "(the dialogue is forgotten)" in out and "(no history)" in out
    saved = read_jsonl(tmp_path / "saved.jsonl")
    assert len(saved) == 2
    second = saved[1]
    assert second["ranking"] == "likelihood" and len(second["candidates"]) == 2
    assert second["settings"]["top_k"] == 3 and second["settings"]["max_history_len"] == 1
    assert read_jsonl(tmp_path / "t.jsonl")[-1] == {"time": read_jsonl(tmp_path / "t.jsonl")[-1]["time"], "event": "reset"}


def test_long_dialogue_beyond_the_model_positions(model_dirs):
    lines = [f"第{i}句:" + "很长的一句话" * 30 for i in range(12)]  # each ~185 tokens; the model has 256 positions
    out = chat(model_dirs, lines, "--max-history-len", "20")
    assert len(out) == 12 and all(out)


def test_interact_py_is_chitchat_chat(model_dirs, tmp_path):
    env = {**os.environ, "CHITCHAT_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "interact.py", "--model", str(model_dirs[0]), "--no-mmi", "--max-len", "6", "--seed", "2"],
        input="你好\n/set topk 2\n再见\n", capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert len(out) == 3 and out[1] == "top_k 2" and out[0] and out[2]
    assert "ranked by the dialogue model's own likelihood" in proc.stderr  # says so when there is no MMI model
    assert "Traceback" not in proc.stderr


def test_bad_option_is_a_one_line_error(model_dirs, capsys):
    from chitchat.cli import main

    assert main(["chat", "--model", str(model_dirs[0]), "--topp", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "top_p 2.0 must be in [0, 1]" in err[0]


# -- terminal mode through prompt_toolkit's pipe input ------------------------------------------

def drive(session: Session, keys: str, tmp_path: Path) -> Capture:
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    capture = Capture()
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        run_terminal(Repl(session, capture, tmp_path / "t.jsonl"), input=pipe, output=DummyOutput(),
                     history_file=tmp_path / "input_history")
    return capture


def test_terminal_mode_reply_commands_ctrl_c_and_ctrl_d(engine, tmp_path):
    session = Session(engine, ReplySettings(max_len=6, seed=4))
    keys = "你好\r" + "/candidates\r" + "不要发送\x03" + "/set topk 2\r" + "\r" + "/save\r" + "\x04"
    capture = drive(session, keys, tmp_path)
    assert len(capture.of("bot")) == 1 and capture.of("bot")[0] == session.turns[0].bot
    info = "\n".join(capture.of("info"))
    assert "ranked by mmi" in info and "top_k 2" in info and "transcript written to" in info
    assert [t.user for t in session.turns] == ["你好"]  # the Ctrl-C'd line was never sent
    assert session.settings.top_k == 2
    assert len(read_jsonl(tmp_path / "t.jsonl")) == 1
    history = (tmp_path / "input_history").read_text(encoding="utf-8")
    assert "你好" in history and "/candidates" in history  # persistent input history


def test_terminal_mode_quit_command(engine, tmp_path):
    session = Session(engine, ReplySettings(max_len=6, seed=4))
    capture = drive(session, "/quit\r" + "你好\r", tmp_path)
    assert capture.items == [] and session.turns == []


def test_ctrl_c_during_a_reply_cancels_it(engine, tmp_path, monkeypatch):
    session = Session(engine, ReplySettings(max_len=6, seed=4))
    real = session.respond
    calls = {"n": 0}

    def interrupted_once(text):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real(text)

    monkeypatch.setattr(session, "respond", interrupted_once)
    capture = drive(session, "第一句\r" + "第二句\r" + "\x04", tmp_path)
    assert "(reply cancelled)" in capture.of("info")
    assert [t.user for t in session.turns] == ["第二句"] and len(capture.of("bot")) == 1


# -- session --------------------------------------------------------------------------------------

def test_session_bounds_history_and_keeps_turns(engine, monkeypatch):
    session = Session(engine, ReplySettings(max_len=6, candidates=3, max_history_len=3, seed=0))
    seen = []
    real = engine.prompt

    def spy(history, settings):  # what the model is given of the history
        kept = real(history, settings)
        seen.append([engine.decode(u) for u in kept])
        return kept

    monkeypatch.setattr(engine, "prompt", spy)
    for text in ["一", "二", "三", "四"]:
        turn = session.respond(text)
        assert turn.bot and len(turn.candidates) == 3 and all("mmi" in c.scores for c in turn.candidates)
        assert turn.candidates[turn.chosen].text == turn.bot
    assert all(len(h) <= 3 for h in seen) and seen[-1][-1] == "四"
    assert seen[-1] == session.history[-4:-1]
    assert session.respond("  \t ") is None and len(session.turns) == 4
    assert len(session.context()) == 3


def test_session_context_fits_the_positions(engine):
    session = Session(engine, ReplySettings(max_len=20, max_history_len=50, seed=0))
    session.history = ["很长的一句话" * 40] * 10
    context = session.context()
    ids = engine.context_ids([engine.encode(u) for u in context])
    assert len(ids) + 20 + 1 <= engine.n_positions


def test_set_rejects_bad_values(engine):
    from chitchat.errors import ChitchatError

    session = Session(engine)
    for name, value in (("temperature", "-1"), ("topp", "3"), ("mmi", "maybe"), ("max_history", "0"),
                        ("max_len", "1000"), ("candidates", "x")):
        with pytest.raises(ChitchatError):
            session.set(name, value)
    assert session.settings == ReplySettings().validate()
    assert session.set("max_len", "5") == "max_len 5"
    assert session.settings.min_len <= 5


def test_terminal_mode_long_line_emoji_empty_line_and_every_command(engine, tmp_path):
    session = Session(engine, ReplySettings(max_len=6, seed=5))
    saved = tmp_path / "saved.jsonl"
    keys = ("/help\r" + "\r" + "长" * 10_000 + "\r" + "😀 hello, ça va?\r" + "/history\r" + "/candidates\r"
            + "/set mmi off\r" + "/set\r" + f"/save {saved}\r" + "/reset\r" + "/history\r" + "/quit\r")
    capture = drive(session, keys, tmp_path)
    assert len(capture.of("bot")) == 2  # the empty line got no reply
    assert [t.user for t in session.turns] == ["长" * 10_000, "😀 hello, ça va?"]
    info = "\n".join(capture.of("info"))
    assert "/save [PATH]" in info and "you: 😀hello,ça va?" in info and "ranked by mmi" in info
    assert "ranking likelihood" in info and "max_history_len 3" in info and "(no history)" in info
    assert [r["user"] for r in read_jsonl(saved)] == ["长" * 10_000, "😀 hello, ça va?"]


def test_int8_chat(model_dirs, tmp_path):
    out = chat(model_dirs, ["你好", "再见"], "--int8", "--seed", "1", transcript=tmp_path / "t.jsonl")
    assert len(out) == 2 and all(out)
    assert all(r["int8"] is True and r["ranking"] == "mmi" for r in read_jsonl(tmp_path / "t.jsonl"))


# -- streaming ------------------------------------------------------------------------------------

@pytest.mark.parametrize("candidates", [1, 4])
def test_a_reply_with_progress_is_the_reply_without(engine, candidates):
    settings = ReplySettings(max_len=10, candidates=candidates, seed=8)
    plain, shown = Session(engine, settings), Session(engine, settings)
    calls: list = []
    for text in ("你好", "今天好累"):
        assert shown.respond(text, calls.append).bot == plain.respond(text).bot
        if candidates == 1:  # known as it is written: its text, piece by piece
            assert "".join(c for c in calls if c) == shown.turns[-1].bot and len([c for c in calls if c]) > 1
        else:  # ranked once written: only that a step was taken
            assert calls and set(calls) == {None}
        calls.clear()
    assert [t.candidates for t in shown.turns] == [t.candidates for t in plain.turns]


def test_terminal_streams_one_candidate_and_spins_for_several(engine, tmp_path):
    session = Session(engine, ReplySettings(max_len=8, candidates=1, seed=2))
    capture = Capture()
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    with create_pipe_input() as pipe:
        pipe.send_text("你好\r/set candidates 3\r再见\r\x04")
        run_terminal(Repl(session, capture, live=True), input=pipe, output=DummyOutput())
    kinds = [k for k, _ in capture.items]
    first_bot = kinds.index("bot")
    assert kinds[:first_bot] and set(kinds[:first_bot]) == {"delta"}
    assert "".join(capture.of("delta")) == capture.of("bot")[0]
    after = kinds[kinds.index("info"):]
    assert "tick" in after and "delta" not in after and len(capture.of("bot")) == 2


def test_terminal_emitter_finishes_a_streamed_line_and_wipes_the_spinner():
    from prompt_toolkit.output.plain_text import PlainTextOutput

    from chitchat.chat.repl import terminal_emitter

    buffer = io.StringIO()
    text = lambda: buffer.getvalue().replace("\r\n", "\n")  # noqa: E731  (a newline is written as CR LF)
    now = [0.0]
    emit = terminal_emitter(PlainTextOutput(buffer), clock=lambda: now[0])
    for piece in ("你", "好", "啊"):
        emit(piece, "delta")
    emit("你好啊", "bot")
    assert text() == "bot> 你好啊\n"
    buffer.truncate(0), buffer.seek(0)
    for _ in range(3):
        emit("", "tick")
        now[0] += 0.1
    emit("好的", "bot")
    out = text()
    assert out.count("\r") >= 3 and out.endswith("\rbot> 好的\n") and "⠋" in out and "⠹" in out
    buffer.truncate(0), buffer.seek(0)
    emit("一半", "delta")
    emit("(reply cancelled)", "info")  # Ctrl-C while it was written: the next line starts afresh
    assert text() == "bot> 一半\n(reply cancelled)\n"
