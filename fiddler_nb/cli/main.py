"""`fiddler-nb` command line: generate, chat, autotune, demo, profile, plan, bench.

Argument parsing stays here; library functions receive plain values, never a Namespace.
Errors a user can fix are printed as one line (no traceback) with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .engine_args import add_engine_args, load_engine

DEFAULT_PROMPT = "The quick brown fox"


def cmd_generate(args: argparse.Namespace) -> int:
    engine = load_engine(args)
    result = engine.generate(args.prompt, max_new_tokens=args.max_new_tokens)
    print(result.text)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # FiddlerError is a ValueError
        print(f"fiddler-nb: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
