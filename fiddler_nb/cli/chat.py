"""`fiddler-nb chat`: an interactive terminal chat that streams the answer.

Reads one user message per line from stdin, streams the assistant's answer to stdout, keeps the
history. Ctrl-C while an answer streams stops that answer (the engine stays usable); Ctrl-C at
the prompt, or end of input (Ctrl-D, or the end of a pipe), exits. The loop (`chat_loop`) takes
plain callables for reading and writing, so tests drive it without a terminal.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

STOPPED = " [stopped]"
PROMPT = "you> "
ANSWER = "assistant> "


def chat_loop(engine: Any, read_line: Callable[[], str], write: Callable[[str], None],
              max_new_tokens: int, system: str | None = None, **generate_kwargs: Any) -> int:
    """Run the conversation until end of input; returns the number of answers given."""
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    answers = 0
    while True:
        write(PROMPT)
        try:
            line = read_line()
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return answers
        if not line:  # end of a pipe
            write("\n")
            return answers
        text = line.rstrip("\n")
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        write(ANSWER)
        reply = []
        stream = engine.chat(history, max_new_tokens, stream=True, **generate_kwargs)
        try:
            for piece in stream:
                reply.append(piece)
                write(piece)
        except KeyboardInterrupt:  # stop this answer, keep the conversation
            stream.close()
            write(STOPPED)
        write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})
        answers += 1


def cmd_chat(args: argparse.Namespace) -> int:
    from .engine_args import TINY_NOTE, is_tiny, load_engine

    engine = load_engine(args)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    print(f"{engine!r}\nCtrl-C stops an answer; Ctrl-D (end of input) quits.", flush=True)
    if is_tiny(args.model):
        print(TINY_NOTE, flush=True)
    chat_loop(engine, sys.stdin.readline, write, args.max_new_tokens, args.system)
    return 0


def add_subcommands(sub) -> None:
    """Add `chat` to the `fiddler-nb` sub-parsers."""
    from .engine_args import add_engine_args

    p = sub.add_parser("chat", help="interactive chat in the terminal, streaming the answers")
    add_engine_args(p)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--system", default=None, help="a system message to start the chat with")
    p.set_defaults(func=cmd_chat)
