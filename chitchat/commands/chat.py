"""`chitchat chat` (and `python interact.py`): chat with the bot in the terminal (chitchat.chat.repl).

On a terminal: a prompt with line editing, the reply written as it comes; when standard input is not
a terminal, one reply line per input line, so the bot can be scripted. The transcript is written as
JSON lines on exit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from chitchat.chat.repl import Repl, run_lines, run_terminal, stream_emitter, terminal_emitter
from chitchat.chat.session import Session, default_transcript_path
from chitchat.engine.options import EngineOptions, load_engine
from chitchat.engine.settings import ReplySettings
from chitchat.files import user_data_dir
from chitchat.options import add_options, option, options_from_args


@dataclass
class ChatCommand:
    """Every option of `chitchat chat`, read from the command line in one pass."""

    engine: EngineOptions = option(help="which models, where", group="model", default_factory=EngineOptions)
    settings: ReplySettings = option(help="how replies are made", group="reply settings", default_factory=ReplySettings)
    transcript: Path | None = option(None, metavar="PATH", help="transcript file written on exit; none: "
                                     "transcripts/ in the user data directory")


def add_arguments(p) -> None:
    add_options(p, ChatCommand, defaults={"engine": {"threads": 1}})


def run(args, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    interactive = stdin.isatty() and stdout.isatty()
    opts = options_from_args(ChatCommand, args)
    settings = opts.settings.validate()

    def say(text: str) -> None:  # start-up notices: on the terminal, or on stderr when scripted
        print(text, file=sys.stderr if not interactive else stdout, flush=True)

    engine = load_engine(opts.engine.validate(), say)
    session = Session(engine, settings)
    engine.context_budget(settings.max_len)
    used = str(engine.ranking_for(settings.ranking))
    what = "the dialogue model's own likelihood" if used == "likelihood" else used
    if settings.retrieved and engine.index_path is None:  # one line: chats as before the index
        say(f"no response index for this model: every candidate is sampled, ranked by {what} (--index DIR gives one)")
    elif used != settings.ranking:
        say(f"{'no MMI model' if engine.mmi is None else 'this model cannot compute all of the ranking'}: "
            f"candidates are ranked by {what}")
    transcript = opts.transcript or default_transcript_path()
    repl = Repl(session, terminal_emitter() if interactive else stream_emitter(stdout), transcript)
    try:
        if interactive:
            say(f"chitchat: model {engine.model_path}" + (f", MMI {engine.mmi_path}" if engine.mmi else "")
                + (", int8" if engine.int8 else "") + ". /help for commands, Ctrl-D to quit.")
            repl.live = True
            run_terminal(repl, history_file=user_data_dir() / "input_history")
        else:
            for stream in (stdin, stdout):  # UTF-8 whatever the locale; undecodable input bytes become U+FFFD
                if hasattr(stream, "reconfigure"):
                    stream.reconfigure(encoding="utf-8", errors="replace")
            run_lines(repl, stdin)
    finally:
        if any("user" in r for r in session.records):
            say(f"transcript written to {session.save(transcript)}")
    return 0
