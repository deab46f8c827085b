"""`fiddler-nb bench`: the strategy x budget matrix, or `--cpu-suite`.

Registered by `cli.build_parser` through `add_subcommands(sub)`. Parsing stays here; the library
functions (`bench.bench`, `cpu_suite.run_cpu_suite`, `demo.run_demo`) receive plain values.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from ..benchmarks.matrix import STRATEGIES
from ..runtime.errors import OptionError
from .engine_args import add_format_args, is_tiny

SUITE_THREADS = 2  # --cpu-suite --expert-dtype without --threads: the 2-core reference


def _budgets(texts: list[str] | None, full_shape: str | None, layers: int,
             total: int | None, card_bytes: int) -> list[int] | None:
    """Ints as given; 'scaled' = a `card_bytes` card's share for `layers` layers; 'all'."""
    if not texts:
        return None
    out = []
    for t in texts:
        if t.isdigit():
            out.append(int(t))
        elif t == "scaled":
            from ..benchmarks.random_checkpoint import scaled_expert_budget

            if not full_shape:
                raise OptionError("--budgets scaled needs --full-shape (e.g. mixtral-8x7b)")
            out.append(scaled_expert_budget(full_shape, card_bytes, layers))
        elif t == "all" and total is not None:
            out.append(total)
        else:
            raise OptionError(f"cannot read budget {t!r}; use an integer, 'scaled' or 'all'")
    return sorted(set(out))


def cmd_bench(args: argparse.Namespace) -> int:
    command = "fiddler-nb " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.cpu_suite and (args.llama_bench or args.gguf):
        return _llama_side_by_side(args, command)
    if args.cpu_suite and args.expert_dtype and args.layer_experts:
        import torch

        from ..benchmarks.layer_experts import measure_layer_experts, table

        torch.set_num_threads(args.threads or SUITE_THREADS)
        rows = [measure_layer_experts(f, rounds=args.suite_repeats or 5,
                                      activation_quant=args.allow_activation_quant)
                for f in args.expert_dtype]
        from dataclasses import asdict

        from ..measure.hardware import machine_facts
        from ..runtime.files import write_json

        machine = asdict(machine_facts())
        machine["isa"] = torch.backends.cpu.get_cpu_capability()
        print(f"machine: {machine['cpu_model']} ({machine['isa']}), "
              f"{machine['threads_used']} threads; {machine['date']}\ncommand: {command}")
        print(table(rows))  # one layer's CPU experts at 1 token vs the read probe
        if args.out:
            path = write_json(args.out, {"kind": "layer-experts", "command": command,
                                         "machine": machine,
                                         "rows": [asdict(r) for r in rows]})
            print(f"saved {path}")
        return 0
    if args.cpu_suite and args.expert_dtype:
        from ..benchmarks.format_suite import run_format_suite

        result = run_format_suite(shape=args.shape, layers=args.layers or 2,
                                  formats=tuple(args.expert_dtype),
                                  threads=args.threads or SUITE_THREADS,
                                  rounds=args.suite_repeats or 3, probe_bytes=args.probe_mib << 20,
                                  command=command,
                                  activation_quant=args.allow_activation_quant)
        if args.out:
            result.save(args.out)
        print(result.table())
        from ..benchmarks.llama_compare import BUILD_HINT

        print(BUILD_HINT)
        return 0
    if args.cpu_suite:
        from ..benchmarks.cpu_suite import run_cpu_suite

        result = run_cpu_suite(shape=args.shape, dtype=args.dtype or "bfloat16",
                               layers=args.layers or 2, probe_bytes=args.probe_mib << 20,
                               repeats=args.suite_repeats, command=command)
        if args.out:
            result.save(args.out)
        print(result.summary())  # ratios last
        return 0
    from ..benchmarks.matrix import bench, records_table, save_records
    from ..measure.shapes import get_shape

    model, layers = args.model, None
    if args.random_shape:
        from ..benchmarks.random_checkpoint import make_random_checkpoint

        layers = args.layers or 2
        model = str(make_random_checkpoint(args.model, args.random_shape, layers,
                                           args.dtype or "bfloat16", args.seed))
    full_shape = args.full_shape or args.random_shape
    total = None
    if full_shape and layers:
        total = layers * get_shape(full_shape).num_experts
    budgets = _budgets(args.budgets, full_shape, layers or 0, total, int(args.card_gb * 1e9))
    expert_dtype, threads = _format_and_threads(args)
    records = bench(model, strategies=args.strategies, budgets=budgets,
                    prompt_lengths=args.prompt_lengths, new_tokens=args.new_tokens,
                    batches=args.batches, repeats=args.repeats, warmup=args.warmup,
                    device=args.device, dtype=args.dtype, seed=args.seed,
                    on_mismatch=args.on_mismatch, full_shape=full_shape, profile=args.profile,
                    command=command, expert_dtype=expert_dtype, group_size=args.group_size,
                    threads=threads)
    print(records_table(records))
    if args.out:
        print(f"saved {save_records(records, args.out)}")
    return 0


def _llama_side_by_side(args: argparse.Namespace, command: str) -> int:
    """--cpu-suite --llama-bench PATH --gguf FORMAT=FILE: fiddler_nb beside llama-bench."""
    import json

    from ..benchmarks.llama_compare import BUILD_HINT, parse_ggufs, run_llama_compare

    if not args.llama_bench or not args.gguf:
        raise OptionError("the llama.cpp side by side needs both --llama-bench and --gguf; "
                          + BUILD_HINT)
    if is_tiny(args.model):
        raise OptionError("--llama-bench needs --model: the safetensors checkpoint the GGUF "
                          "files were converted from")
    result = run_llama_compare(args.model, args.llama_bench, parse_ggufs(args.gguf),
                               rounds=args.suite_repeats or 3,
                               threads=args.threads or SUITE_THREADS,
                               new_tokens=args.new_tokens, direct=args.gguf_direct,
                               activation_quant=args.allow_activation_quant, command=command,
                               on_line=lambda line: print(json.dumps(line), flush=True))
    if args.out:
        result.save(args.out)
    print(result.table())
    return 0


def _format_and_threads(args: argparse.Namespace) -> tuple[str | None, int | None]:
    """The engine's expert format and threads: explicit options over the plan's (if any)."""
    fmt, threads = (args.expert_dtype or [None])[0], args.threads
    if args.plan:
        from ..runtime.generation.plan_file import Plan

        settings = Plan.load(args.plan).settings
        fmt = fmt or settings.expert_dtype
        threads = threads or settings.threads
    return fmt, threads


def add_subcommands(sub) -> None:
    """Add `bench` to the `fiddler-nb` sub-parsers."""
    b = sub.add_parser("bench", help="measure strategies x GPU expert budgets, or --cpu-suite")
    b.add_argument("--cpu-suite", action="store_true",
                   help="CPU kernel / engine overhead / layer floor suite (runs anywhere)")
    b.add_argument("--model", default="tiny",
                   help="checkpoint dir or 'tiny'; with --random-shape, where to write it")
    b.add_argument("--random-shape", default=None,
                   help="write a random checkpoint of this shape preset (e.g. mixtral-8x7b)")
    b.add_argument("--layers", type=int, default=None,
                   help="layers of the random model (default 2)")
    b.add_argument("--shape", default="mixtral-8x7b", help="--cpu-suite: expert shape preset")
    b.add_argument("--probe-mib", type=int, default=512,
                   help="--cpu-suite: bandwidth probe buffer size (MiB, well past the LLC)")
    b.add_argument("--suite-repeats", type=int, default=None,
                   help="--cpu-suite: repeats of every part (default: each part's own)")
    b.add_argument("--full-shape", default=None,
                   help="shape preset for derived full-model tok/s and 'scaled' budgets")
    b.add_argument("--card-gb", type=float, default=24.0,
                   help="GPU memory (GB) that 'scaled' budgets are taken from")
    b.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    b.add_argument("--budgets", nargs="*", default=None,
                   help="GPU expert budgets: integers, 'scaled', 'all' (default: 0, 1/4, 1/2, all)")
    b.add_argument("--prompt-lengths", nargs="+", type=int, default=[16, 128, 512])
    b.add_argument("--new-tokens", type=int, default=8)
    b.add_argument("--batches", nargs="+", type=int, default=[1, 2])
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--device", default=None)
    b.add_argument("--dtype", default=None)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--on-mismatch", default="raise", choices=["raise", "record"],
                   help="different greedy tokens across strategies: fail, or record and go on")
    b.add_argument("--profile", default=None,
                   help="a HardwareProfile JSON for 'auto' (default: the engine's default model)")
    add_format_args(b, many=True)
    b.add_argument("--plan", default=None,
                   help="a plan from `fiddler-nb autotune --out`: its expert format and threads "
                        "(bench sweeps budgets and strategies itself; explicit options win)")
    b.add_argument("--layer-experts", action="store_true",
                   help="--cpu-suite --expert-dtype: one Mixtral-shaped layer's CPU experts at 1 "
                        "token, native kernels vs torch's, as fractions of the read probe")
    b.add_argument("--allow-activation-quant", action="store_true",
                   help="--cpu-suite --expert-dtype: also run the int8 / int4 formats with CPU "
                        "kernels that round activations to int8 per 32 inputs (speed and error)")
    b.add_argument("--llama-bench", default=None, metavar="PATH",
                   help="--cpu-suite: llama.cpp's llama-bench, run interleaved with fiddler_nb "
                        "on --gguf files of --model's weights")
    b.add_argument("--gguf", action="append", default=[], metavar="FORMAT=FILE",
                   help="with --llama-bench: FORMAT bf16 / int8 (Q8_0) / int4 (Q4_0) and the "
                        "GGUF file of the same weights, or file=FILE for a file compared as it "
                        "is (e.g. Q4_K_M); repeat for several")
    b.add_argument("--gguf-direct", action="store_true",
                   help="with --llama-bench: also load each GGUF file itself in fiddler_nb")
    b.add_argument("--out", default=None, help="write the JSON here")
    b.set_defaults(func=cmd_bench)


def cmd_demo_report(args: argparse.Namespace) -> int:
    """For cli.py's `demo`: run the main job and print where the report is."""
    from ..notebook.demo import run_demo

    print(f"report: {run_demo(args.out_dir, quick=not args.full)}")
    return 0


def add_demo_args(demo: argparse.ArgumentParser) -> None:
    """Options of `fiddler-nb demo` when cli.py wires it to `cmd_demo_report`."""
    demo.add_argument("--out-dir", default="reports", help="where demo.html and its JSON go")
    demo.add_argument("--full", action="store_true", help="longer prompts and more repeats")
    demo.set_defaults(func=cmd_demo_report)
