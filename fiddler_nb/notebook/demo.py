"""The main job: profile, calibrate, benchmark and report, on the embedded tiny model.

`run_demo(out_dir)` takes a few minutes on a 2-core CPU-only machine and writes
`<out_dir>/demo.html` (plotly inlined, opens offline) plus the JSON it was drawn from:
  1. a quick hardware profile for a Mixtral-8x7B bf16 expert (CPU curve with its spread, read
     bandwidth; GPU and link measured when CUDA is present, else a cited preset GPU -- labelled
     projected);
  2. the bench matrix on the tiny model (calibration inside `bench`): strategies x GPU expert
     budgets x prompt lengths x batch 1 and 2, measured with repeats until steady, same greedy
     tokens checked;
  3. the planner's projection for Mixtral-8x7B on the profiled (or preset) GPU;
  4. the report, which opens with what was found (benchmarks/findings.py) in two or three
     sentences and a busy-machine line when the load said so; then the figures behind it (the
     projection, the CPU expert curve), then what was measured here -- on a CPU-only machine one
     bar per strategy ("no GPU: every budget runs on the CPU"), not a curve against the budget --
     and last the tables, with readable headers and human units.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from ..benchmarks.findings import (cpu_expert_finding, measured_finding, projection_finding,
                                   strategy_summary)
from ..benchmarks.matrix import bench, records_table, save_records
from ..benchmarks.random_checkpoint import scaled_expert_budget
from ..benchmarks.report import MEASURED_COLUMNS, PROJECTED_COLUMNS, Report
from ..measure.planner import plan
from ..measure.profiler import profile_hardware
from ..runtime.files import write_json
from .measured_plots import latency_with_spread, strategies_without_gpu
from .plots import tokens_per_s_vs_budget

PROJECTED_SHAPE = "mixtral-8x7b"
PRESET_GPU = "rtx-4090"  # a 24 GB consumer card, the paper's target class
QUICK = dict(prompt_lengths=(16, 128, 512), repeats=3, new_tokens=8)  # ~20 s of bench on 2 idle cores
FULL = dict(prompt_lengths=(16, 128, 512), repeats=7, new_tokens=32)
TITLE = "fiddler_nb demo: what this machine does, and what a GPU would add"


def run_demo(out_dir: str | Path = "reports", quick: bool = True, model: str = "tiny",
             preset_gpu: str = PRESET_GPU, progress: bool = True) -> Path:
    """Run the main job and return the path of the HTML report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(shlex.quote(a) for a in sys.argv)
    profile = _profile(quick, preset_gpu, out)
    records = bench(model, command=command, progress=progress, **(QUICK if quick else FULL))
    save_records(records, out / "demo_bench.json")
    print(records_table(records))
    plan_records = _plan(profile)
    write_json(out / "demo_plan.json", {"kind": "projected",
                                        "records": [asdict(r) for r in plan_records]})
    report = Report(TITLE)
    _conclusion(report, records, profile, plan_records)
    _projected_section(report, profile, plan_records)
    _measured_section(report, records, profile, command)
    _memory_section(report, model)
    _tables(report, records, plan_records)
    return report.write(out / "demo.html")


def _profile(quick: bool, preset_gpu: str, out: Path):
    """Measured CPU (+GPU with CUDA); without CUDA the preset GPU is attached (projected)."""
    profile = profile_hardware(PROJECTED_SHAPE, quick=quick)
    profile.save(out / "demo_profile.json")
    return profile if profile.has_measured_gpu else profile.with_gpu_preset(preset_gpu)


def _plan(profile):
    fit = scaled_expert_budget(PROJECTED_SHAPE, profile.gpu_memory_bytes)
    budgets = sorted({*range(0, fit, max(1, fit // 6)), fit})  # ~7 points up to what fits
    return plan(PROJECTED_SHAPE, profile, budgets=budgets, prompt_tokens=512, new_tokens=32)


def _gpu(profile) -> str:
    return profile.gpu_preset["name"] if profile.gpu_preset else profile.facts.gpu_name


def _cases(records) -> tuple[int, int]:
    """(the shortest prompt, for decode; the longest, for prefill)."""
    lengths = [r.prompt_tokens for r in records]
    return min(lengths), max(lengths)


def _conclusion(report: Report, records, profile, plan_records) -> None:
    """The first lines of the report: what was found here, in a few sentences."""
    small, big = _cases(records)
    summaries = strategy_summary(records, small, big)
    sentences = [cpu_expert_finding(profile),
                 projection_finding(plan_records, _gpu(profile), PROJECTED_SHAPE, profile),
                 measured_finding(records, summaries)]
    # the profile's note first: the first two sentences rest on its CPU curve
    busy = profile.busy_note() or next((r.busy_note for r in records if r.busy_note), None)
    report.lead(sentences, busy)


def _projected_section(report: Report, profile, plan_records) -> None:
    gpu = _gpu(profile)
    report.heading(f"Projected: {PROJECTED_SHAPE} on {gpu} with this machine's CPU", "projected")
    sources = "; ".join(f"{part.replace('_', ' ')}: {how.replace(':', ' ')}"
                        for part, how in profile.sources.items())
    report.note("Nothing here ran on a GPU: the planner combines the CPU curve measured here with "
                f"the GPU and link figures ({sources}). Lines are dashed.")
    report.figure(tokens_per_s_vs_budget(projected=plan_records, phase="decode", batch=None,
                                         title_suffix=f" ({PROJECTED_SHAPE}, {gpu})"))
    lat = profile.latency_model()
    report.figure(latency_with_spread(
        profile, lat, profile.expert_bytes,
        title=f"One {PROJECTED_SHAPE} expert: run on the CPU (measured here) vs copy to the GPU "
              f"and run there<br><sup>projected: {lat.source}</sup>"))


def _measured_section(report: Report, records, profile, command: str) -> None:
    r0 = records[0]
    small, big = _cases(records)
    report.heading(f"Measured on this machine: {r0.machine}", "measured")
    report.note(f"{r0.date}; device {r0.device}; model {r0.model} ({r0.layers} MoE layers x "
                f"{r0.experts} experts, top-{r0.top_k}, H={r0.hidden_size}, "
                f"I={r0.intermediate_size}, {r0.dtype}); command: {command}")
    if r0.device == "cpu":
        summaries = strategy_summary(records, small, big)
        report.note("No GPU here: the fast device is the CPU, so every strategy and every budget "
                    "runs on the CPU (this checks that the strategies agree and shows engine "
                    "overheads; it is not a GPU speed-up). GPU numbers are projected, above.")
        report.figure(strategies_without_gpu(summaries, "decode",
                                              f", prompt {small} tokens, batch 1"))
        report.figure(strategies_without_gpu(summaries, "prefill",
                                              f", prompt {big} tokens, batch 1"))
    else:
        report.figure(tokens_per_s_vs_budget(measured=records, phase="decode",
                                             prompt_tokens=small))
        report.figure(tokens_per_s_vs_budget(measured=records, phase="prefill",
                                             prompt_tokens=big))
    mismatched = [r for r in records if r.tokens_match is False]
    report.note("All strategies produced the same greedy tokens." if not mismatched else
                f"{len(mismatched)} cells produced different tokens from the reference.")
    report.note("How it was measured: " + "; ".join(n for n in r0.notes
                                                    if n.startswith(("repeats", "load"))) + ".")
    report.heading(f"CPU expert profile ({profile.shape_name}, {profile.dtype})", "measured")
    report.pre(profile.summary())


def _memory_section(report: Report, model: str) -> None:
    """`Engine.memory()` of the benchmarked model: host bytes of experts, fast-device bytes."""
    from ..api import load

    eng = load(model, expert_budget=0, placement="none")
    report.heading(f"Memory of the loaded engine ({eng.expert_dtype} experts)", "measured")
    report.pre(eng.memory().table())
    eng.close()


def _tables(report: Report, records, plan_records) -> None:
    report.heading("Every number above, as tables")
    report.table(records, MEASURED_COLUMNS, "measured", collapsed=True)
    report.table(plan_records, PROJECTED_COLUMNS, "projected", collapsed=True)
