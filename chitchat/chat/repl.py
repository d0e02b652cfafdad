"""Chat with the bot in the terminal: `chitchat chat` (and `python interact.py`).

On a terminal: a prompt_toolkit prompt with line editing and a persistent input history; the reply
is printed as it is written when one candidate is sampled, and a spinner turns while several are
sampled and ranked (the reply is known only then); Ctrl-C cancels the line being typed or the
reply being computed, Ctrl-D or /quit ends. When standard input
is not a terminal, each input line gets one reply on its own output line, with no prompt and no
colour (blank lines get none), so the bot can be scripted. Slash commands work in both modes.
On exit the transcript is written as JSON lines.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, TextIO

from chitchat.chat.session import Session
from chitchat.engine.scoring import SCORINGS
from chitchat.engine.settings import describe
from chitchat.errors import ChitchatError


def _help() -> str:
    """The commands, and every setting `/set` takes with its other names (from ReplySettings)."""
    settings = [f"    {d['name']}" + (f" ({', '.join(d['names'])})" if d["names"] else "") + f": {d['help']}"
                for d in describe()]
    return "\n".join([
        "commands:",
        "  /help               this help",
        "  /reset              forget the dialogue so far",
        "  /history            the utterances the bot sees now",
        "  /candidates         the last turn's candidates, their source and scores (lower is better)",
        "  /set                list the settings",
        "  /set NAME VALUE     change one (mmi on|off: the ranking mmi or likelihood):",
        *settings,
        "  /save [PATH]        write the transcript now (default: the transcript file)",
        "  /quit               end (Ctrl-D too)"])


Emit = Callable[[str, str], None]  # (text, kind): "bot", "info" or "error"; while a reply is computed,
# "delta" (its new text, as it is written) or "tick" (a decoding step of a reply not known yet)
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
SPIN_S = 0.08  # the spinner turns at most this often


def _setting(v) -> str:
    return ("on" if v else "off") if isinstance(v, bool) else str(v)


def _score(x) -> str:
    return "-" if x is None else f"{x:.3f}"


class Repl:
    """The line handler shared by the terminal and the non-terminal modes."""

    def __init__(self, session: Session, emit: Emit, transcript: Path | None = None, live: bool = False):
        """`live`: show the reply as it is written ("delta"), or a spinner ("tick") while it cannot be."""
        self.session = session
        self.emit = emit
        self.transcript = transcript
        self.live = live

    def _progress(self, new: str | None) -> None:
        if new is None:
            self.emit("", "tick")
        elif new:
            self.emit(new, "delta")

    def handle(self, line: str) -> bool:
        """Answer one input line; False when the session should end."""
        text = line.strip()
        if not text:
            return True
        if text.startswith("/"):
            try:
                return self.command(text)
            except ChitchatError as e:
                self.emit(f"error: {e}", "error")
                return True
        turn = self.session.respond(text, self._progress) if self.live else self.session.respond(text)
        if turn is not None:
            self.emit(turn.bot, "bot")
        return True

    def command(self, text: str) -> bool:
        name, _, rest = text[1:].partition(" ")
        name, rest = name.lower(), rest.strip()
        session = self.session
        if name in ("quit", "exit", "q"):
            return False
        if name in ("help", "h", "?"):
            self.emit(_help(), "info")
        elif name == "reset":
            session.reset()
            self.emit("(the dialogue is forgotten)", "info")
        elif name == "history":
            context = session.context()
            first_speaker = len(session.history) - len(context)  # history alternates user, bot
            lines = [f"{'you' if (first_speaker + i) % 2 == 0 else 'bot'}: {u}" for i, u in enumerate(context)]
            self.emit("\n".join(lines) if lines else "(no history)", "info")
        elif name == "candidates":
            self.emit(self.candidates_text(), "info")
        elif name == "set":
            if not rest:
                s = session.settings.to_dict()
                self.emit("  ".join(f"{k} {_setting(v)}" for k, v in s.items()), "info")
            else:
                key, _, value = rest.partition(" ")
                if not value.strip():
                    raise ChitchatError("usage: /set NAME VALUE")
                self.emit(session.set(key, value), "info")
        elif name == "save":
            target = Path(rest).expanduser() if rest else self.transcript
            if target is None:
                raise ChitchatError("usage: /save PATH")
            self.emit(f"transcript written to {session.save(target)}", "info")
        else:
            raise ChitchatError(f"unknown command /{name} (/help lists them)")
        return True

    def candidates_text(self) -> str:
        if not self.session.turns:
            return "(no turn yet)"
        turn = self.session.turns[-1]
        names = [name for name in SCORINGS if any(name in c.scores for c in turn.candidates)]
        lines = [f"ranked by {turn.ranking}; lower is better: " + "; ".join(f"{n}: {SCORINGS[n].help}" for n in names)]
        for i, c in enumerate(turn.candidates):
            mark = "*" if i == turn.chosen else " "
            scores = "  ".join(f"{n} {_score(c.scores.get(n)):>7}" for n in names)
            lines.append(f"{mark} {i + 1}. [{c.source}] {scores}  {c.text or '(empty)'}"
                         + ("" if c.finished else "  (cut at max_len)"))
        return "\n".join(lines)


def run_lines(repl: Repl, lines: Iterable[str]) -> None:
    """Non-terminal mode: each line in, at most one reply out."""
    for raw in lines:
        if not repl.handle(raw.rstrip("\r\n")):
            return


def stream_emitter(out: TextIO) -> Emit:
    def emit(text: str, kind: str) -> None:
        out.write(text + "\n")
        out.flush()
    return emit


def terminal_emitter(output=None, clock=time.monotonic) -> Emit:
    """Coloured lines; a reply streamed as "delta"s is finished by its "bot" line, and a spinner
    ("tick"s) is wiped before the next line."""
    from prompt_toolkit import print_formatted_text
    from prompt_toolkit.application.current import get_app_session
    from prompt_toolkit.formatted_text import FormattedText

    styles = {"bot": "ansigreen", "info": "ansibrightblack", "error": "ansired"}
    state = {"streamed": None, "ticks": 0, "shown": -SPIN_S}  # streamed: the reply's text printed so far

    def put(fragments: list, end: str = "") -> None:
        print_formatted_text(FormattedText(fragments), output=output, end=end, flush=True)

    def wipe() -> None:
        out = output or get_app_session().output
        out.write_raw("\r")
        out.erase_end_of_line()
        out.flush()

    def emit(text: str, kind: str) -> None:
        if kind == "tick":
            if state["streamed"] is None and clock() - state["shown"] >= SPIN_S:
                state["shown"] = clock()
                wipe()
                put([("ansibrightblack", SPINNER[state["ticks"] % len(SPINNER)])])
                state["ticks"] += 1
            return
        if kind == "delta":
            if state["streamed"] is None:
                if state["ticks"]:
                    wipe()
                put([("ansigreen bold", "bot> ")])
                state["streamed"] = ""
            put([("ansigreen", text)])
            state["streamed"] += text
            return
        streamed, ticks = state["streamed"], state["ticks"]
        state.update(streamed=None, ticks=0, shown=-SPIN_S)
        if streamed is not None:
            if kind == "bot" and text.startswith(streamed):
                put([("ansigreen", text[len(streamed):])], end="\n")
                return
            put([], end="\n")  # the reply was cut short (Ctrl-C)
        elif ticks:
            wipe()
        prefix = [("ansigreen bold", "bot> ")] if kind == "bot" else []
        print_formatted_text(FormattedText(prefix + [(styles.get(kind, ""), text)]), output=output)
    return emit


def run_terminal(repl: Repl, *, input=None, output=None, history_file: Path | None = None) -> None:
    """Terminal mode on prompt_toolkit (`input`/`output` let tests drive it through a pipe)."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    history = InMemoryHistory()
    if history_file is not None:
        try:
            history_file.parent.mkdir(parents=True, exist_ok=True)
            history = FileHistory(str(history_file))
        except OSError:
            pass
    prompt = PromptSession(history=history, input=input, output=output)
    while True:
        try:
            line = prompt.prompt([("ansicyan bold", "you> ")])
        except KeyboardInterrupt:  # Ctrl-C while typing: drop the line
            continue
        except EOFError:  # Ctrl-D
            return
        try:
            if not repl.handle(line):
                return
        except KeyboardInterrupt:  # Ctrl-C while the reply is computed
            repl.emit("(reply cancelled)", "info")
