"""`chat`: a multi-turn conversation in the terminal, answers streamed as they are generated."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from mlx_ft.atomic import write_text
from mlx_ft.chat_template import Message
from mlx_ft.data.formats import with_system
from mlx_ft.inference import generation
from mlx_ft.inference.sampling import Sampling
from mlx_ft.models import loader

HELP = (
    "commands: /clear (forget the conversation), /system TEXT (set the system prompt; /system alone removes "
    "it), /save FILE (write the conversation as JSON), /help; Ctrl-D or /exit quits, Ctrl-C stops an answer"
)


class Session:
    """The conversation so far and the commands that change it; `reply` streams the model's answer."""

    def __init__(
        self, loaded: loader.Loaded, sampling: Sampling, system: str | None, out: TextIO | None = None
    ) -> None:
        # sys.stdout looked up now, not at import: a default bound then would outlive a redirected stdout
        self.loaded, self.sampling, self.system, self.out = loaded, sampling, system, out or sys.stdout
        self.turns: list[Message] = []

    @property
    def messages(self) -> list[Message]:
        return with_system(self.turns, self.system)

    def command(self, line: str) -> bool:
        """Run a /command; False when it asks to quit."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/clear":
            self.turns = []
            self._say("conversation cleared")
        elif name == "/system":
            self.system = arg or None
            self._say(f"system prompt: {arg}" if arg else "system prompt removed")
        elif name == "/save":
            if not arg:
                self._say("usage: /save FILE")
            else:
                write_text(Path(arg), json.dumps({"messages": self.messages}, ensure_ascii=False, indent=2) + "\n")
                self._say(f"saved {len(self.messages)} messages to {arg}")
        else:
            self._say(HELP)
        return True

    def reply(self, text: str) -> str:
        """Answer `text` in the conversation; Ctrl-C stops the answer and keeps the conversation as it was."""
        asked = [*self.messages, {"role": "user", "content": text}]
        pieces: list[str] = []
        try:
            for chunk in generation.stream(self.loaded.model, self.loaded.tokenizer, asked, self.sampling):
                self.out.write(chunk.text)
                self.out.flush()
                pieces.append(chunk.text)
        except KeyboardInterrupt:
            self.out.write("\n")
            self._say("answer stopped; it is not kept in the conversation")
            return ""
        self.out.write("\n")
        answer = "".join(pieces)
        self.turns += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        return answer

    def _say(self, text: str) -> None:
        print(f"[{text}]", file=self.out, flush=True)


def run(session: Session, read: Callable[[str], str] = input) -> None:
    """Read lines until Ctrl-D, Ctrl-C at the prompt or /exit."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    # The outer handler matters as much as the one round `read`: a Ctrl-C that lands between two statements of
    # the loop (after the banner, during a /command) must quit as cleanly as one at the prompt.
    try:
        session._say(f"chatting with {session.loaded.label}; {HELP}")
        while True:
            line = read("you> ").strip()
            if not line:
                continue
            if line.startswith("/"):
                if not session.command(line):
                    return
                continue
            session.reply(line)
    except (EOFError, KeyboardInterrupt):
        session.out.write("\n")
