"""`fiddler-nb` command line: generate, chat, autotune, demo, profile, plan, bench.

Argument parsing stays here; library functions receive plain values, never a Namespace.
Errors a user can fix are printed as one line (no traceback) with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..runtime.errors import FiddlerError
from .engine_args import TINY_NOTE, add_engine_args, is_tiny, load_engine
from .hints import cli_message

DEFAULT_PROMPT = "The quick brown fox"
EXIT_BAD_INPUT = 2  # as argparse uses for a bad command line
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell convention


def cmd_generate(args: argparse.Namespace) -> int:
    engine = load_engine(args)
    result = engine.generate(args.prompt, max_new_tokens=args.max_new_tokens,
                             allow_beyond_context=args.allow_beyond_context)
    print(result.text)
    if is_tiny(args.model):
        print(TINY_NOTE)
    print()
    print(f"{engine!r}")
    print(f"resident experts: {len(engine.placement)} of {engine.num_layers * engine.num_experts}")
    print(result.stats.table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fiddler-nb", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate text and print per-layer stats")
    add_engine_args(gen)
    gen.add_argument("--prompt", default=DEFAULT_PROMPT)
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--allow-beyond-context", action="store_true",
                     help="generate past the model's context length (max_position_embeddings)")
    gen.set_defaults(func=cmd_generate)
    from . import bench as cli_bench
    from . import chat as cli_chat
    from . import measure as cli_measure
    from . import tune as cli_tune

    demo = sub.add_parser("demo", help="the main job: profile, calibrate, bench, HTML report")
    cli_bench.add_demo_args(demo)
    cli_measure.add_subcommands(sub)
    cli_bench.add_subcommands(sub)
    cli_chat.add_subcommands(sub)
    cli_tune.add_subcommands(sub)
    return parser


def quiet_libraries() -> None:
    """Library warnings a CLI user cannot act on (deprecations, generation-config advice) stay
    out of the terminal; what fiddler_nb has to say is in its own output."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    for module in ("transformers", "torch", "accelerate", "huggingface_hub"):
        warnings.filterwarnings("ignore", module=module)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        return args.func(args)
    except FiddlerError as err:  # bad input: one line, no traceback
        print(f"fiddler-nb: error: {cli_message(str(err))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # e.g. an --out folder that cannot be written
        print(f"fiddler-nb: error: {err.strerror or err}: {err.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("fiddler-nb: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
