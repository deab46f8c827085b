"""`fiddler-nb chat`: an interactive terminal chat that streams the answer.

Reads one user message per line from stdin, streams the assistant's answer to stdout, keeps the
history. Ctrl-C while an answer streams stops that answer (the engine stays usable); Ctrl-C at
the prompt, or end of input (Ctrl-D, or the end of a pipe), exits. When the conversation plus
the answer would outgrow the model's context, the oldest turns are dropped (said in one line);
a message too long on its own is refused in one line and the chat goes on. The loop
(`chat_loop`) takes plain callables for reading and writing, so tests drive it without a
terminal.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any, Callable

from ..runtime.errors import ContextLengthError

STOPPED = " [stopped]"
PROMPT = "you> "
ANSWER = "assistant> "


def fit_to_context(engine: Any, history: list[dict[str, str]], max_new_tokens: int,
                   allow_beyond_context: bool = False) -> int:
    """Drop the oldest turns of `history` (in place; a leading system message and the newest
    message stay; what is left starts with a user message) until the rendered conversation plus
    max_new_tokens fits the engine's context.
    Returns how many were dropped (0 when the engine states no context); raises
    ContextLengthError, leaving `history` as it was, when even that does not fit."""
    from ..runtime.generation.chat import chat_prompt_ids

    limit = getattr(engine, "max_context", None)
    if not isinstance(limit, int) or getattr(engine, "tokenizer", None) is None \
            or allow_beyond_context:
        return 0
    first = 1 if history and history[0]["role"] == "system" else 0
    trial = list(history)
    tokens = chat_prompt_ids(engine, trial).shape[1]
    while len(trial) - first > 1 and tokens + max_new_tokens > limit:
        del trial[first]
        while len(trial) - first > 1 and trial[first]["role"] != "user":
            del trial[first]  # whole turns: templates that alternate roles start with a user
        tokens = chat_prompt_ids(engine, trial).shape[1]
    engine.check_context(tokens, max_new_tokens)
    dropped = len(history) - len(trial)
    history[:] = trial
    return dropped


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
        try:
            dropped = fit_to_context(engine, history, max_new_tokens,
                                     generate_kwargs.get("allow_beyond_context", False))
        except ContextLengthError as err:  # this message alone is too long: say so, go on
            history.pop()
            write(f"[not answered: {err}]\n")
            continue
        if dropped:
            write(f"[{dropped} older message{'s' * (dropped > 1)} dropped to fit the model's "
                  f"context of {engine.max_context} tokens]\n")
        stream = engine.chat(history, max_new_tokens, stream=True, **generate_kwargs)
        write(ANSWER)
        reply = []
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

    # Ctrl-C stops an answer even when a parent started us with SIGINT ignored (Python then
    # installs no KeyboardInterrupt handler: seen under pytest-xdist and nohup)
    signal.signal(signal.SIGINT, signal.default_int_handler)
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
