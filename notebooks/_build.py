"""Write the numbered tutorial notebooks (no outputs) from the cell lists below.

Run `python notebooks/_build.py` after editing; the committed .ipynb files are its output.
Each notebook: a title, a setup cell, then one short call per step with a markdown cell saying
what the step shows and why. Logic lives in the package; sizes come from `fiddler_nb.notebook.nbmode`.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
SETUP = """import fiddler_nb as fnb
from fiddler_nb import nbmode, plots, widgets

S = nbmode.sizes()  # smoke on CPU-only machines, full on CUDA (FIDDLER_NB_MODE overrides)
print(f"mode: {S.mode} ({S.reason})")"""
SETUP_MD = ("**Setup.** `nbmode.sizes()` is the one switch: on a CPU-only machine every size is "
            "tiny (smoke mode: the numbers show the machinery works, not GPU speed); on a CUDA "
            "machine the same cells measure the real thing. Set `FIDDLER_NB_MODE=smoke|full` "
            "to force a mode.")

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {}  # name -> [(kind, source)]


def md(text: str) -> tuple[str, str]:
    return ("md", text)


def code(text: str) -> tuple[str, str]:
    return ("code", text)


NOTEBOOKS["01_quickstart"] = [
    md("# 01 Quickstart: run an MoE model with experts split between GPU and CPU\n\n"
       "Fiddler (arXiv 2402.07033) keeps attention, norms, routers and the most *popular* "
       "experts on the GPU and the other experts in CPU memory; each activated expert either "
       "runs on the CPU or has its weights copied over, whichever is faster on this machine."),
    md(SETUP_MD), code(SETUP),
    md("**Load a model.** `fnb.load` puts non-expert weights on the fast device and keeps "
       "`expert_budget` experts there; the rest stay in CPU memory. In smoke mode this is the "
       "embedded tiny Mixtral (built locally, no download) with a quarter of its experts "
       "resident; in full mode a Mixtral-8x7B-shaped model with a 24 GB card's share. "
       "`S.load()` is `fnb.load(path, expert_budget=0)`, then `fnb.calibrate(eng, prompts)` "
       "(routing popularity: which experts are hot), then `eng.set_expert_budget(...)`."),
    code("eng = S.load()\neng"),
    md("**Generate.** The result carries the text, the token ids and statistics: prefill and "
       "decode time, and per layer how many expert-token pairs ran on a resident expert, on "
       "the CPU, or after copying weights. (The tiny model has random weights: its text is "
       "gibberish bytes; the statistics are what matter here.)"),
    code("res = eng.generate(S.prompt(), max_new_tokens=S.new_tokens)\n"
         "print(repr(res.text))\nprint(res.stats.table())"),
    md("**Routing popularity.** Which experts the router picked on the calibration set decides "
       "which experts are worth keeping on the GPU: counts per MoE layer x expert. "
       "`fnb.calibrate(eng, your_prompts)` records new ones and re-places at once."),
    code("eng.popularity.counts"),
    md("**Change the GPU expert budget without reloading.** A smaller budget means fewer "
       "resident experts, so more pairs run on the CPU: watch the `resident` and `cpu` columns."),
    code("eng.set_expert_budget(eng.num_layers * eng.num_experts // 8)\n"
         "print(eng)\nprint(eng.generate(S.prompt(), max_new_tokens=S.new_tokens).stats.table())"),
    md("**One decode step, layer by layer.** Each bar is one MoE layer's expert work on a "
       "lane named for the device that ran it: resident experts on the GPU, offloaded ones on "
       "the CPU, copies on the transfer lane. On a GPU the CPU and GPU lanes overlap; on a "
       "CPU-only machine the resident experts run on the CPU too, so everything is on the cpu "
       "lane (the table's `work` column says which experts ran)."),
    code("trace = eng.trace_decode_step(S.prompt())\nprint(trace.table())\n"
         "plots.decode_timeline(trace)"),
    md("**The transformers model still works unchanged** -- the orchestration is plugged in as "
       "an experts implementation, so `model.generate` runs through it too."),
    code("eng.model.generate(**eng.encode(S.prompt()), max_new_tokens=4, do_sample=False)"),
]

NOTEBOOKS["02_profile_your_hardware"] = [
    md("# 02 Profile your hardware\n\n"
       "Whether an offloaded expert should run on the CPU or be copied to the GPU depends on "
       "this machine: CPU speed for one expert, memory bandwidth, and the host-GPU link. The "
       "profiler measures what is here and never invents what is not."),
    md(SETUP_MD), code(SETUP + "\nfrom fiddler_nb.measure.profiler import profile_hardware"),
    md("**Measure one Mixtral-8x7B expert on this CPU** (real shape and dtype, random weights) "
       "for a few token counts, and probe CPU read bandwidth. Smoke mode uses fewer points and "
       "smaller probes; without CUDA the GPU parts are skipped with the reason recorded."),
    code('prof = profile_hardware("mixtral-8x7b", quick=S.profile_quick, tokens=S.profile_tokens)\n'
         "print(prof.summary())"),
    md("**Save the profile** as JSON so the engine (`fnb.load(..., profile=path)`) and the "
       "planner can use it later without measuring again."),
    code('profile_path = prof.save(nbmode.output_dir() / "profile-mixtral-8x7b.json")\nprofile_path'),
    md("**CPU path vs copy-to-GPU path for one expert.** Without a measured GPU the GPU side "
       "is the documented default (see the title). The CPU cost grows with the tokens routed "
       "to the expert, the copy cost is nearly flat: they cross at n*."),
    code("plots.latency_curves(prof.latency_model(), prof.expert_bytes)"),
    md("**Attach a GPU you do not have.** A preset (vendor figures, cited) combined with the "
       "CPU measured here gives a *projected* crossover -- here the paper's 24 GB Quadro RTX "
       "6000 on PCIe 3."),
    code("with_gpu = prof.with_gpu_preset(S.gpu_preset)\n"
         "print(with_gpu.latency_model().source, '| crossover n* =', with_gpu.crossover())\n"
         "plots.latency_curves(with_gpu.latency_model(), with_gpu.expert_bytes)"),
]

NOTEBOOKS["03_tune_the_gpu_expert_budget"] = [
    md("# 03 Tune the GPU expert budget\n\n"
       "How many experts to keep on the GPU, which ones (placement), and what to do with the "
       "others (execution) -- try them live. The tuner re-places experts without reloading."),
    md(SETUP_MD), code(SETUP),
    md("**Load and calibrate**: `S.load()` records routing popularity on a calibration set, so "
       "`popularity` placement knows which experts are hot, then places the budget."),
    code("eng = S.load()\neng"),
    md("**The tuner.** Move the budget slider (experts; the label gives the memory in GiB), "
       "pick a placement and an execution policy and a prompt length, then press *Measure*. "
       "Each point is a warm-up and then repeated generations until the timing is steady (or "
       "two seconds are spent); the plot shows the median with its interquartile range as an "
       "error bar, so a difference smaller than the bars is noise. Errors show in red under "
       "the controls. **Without a GPU** the budget cannot change speed: every expert runs from "
       "CPU memory, the tuner says so above its controls, and the points measure this CPU "
       "(engine overhead and noise). Notebook 06 projects what a budget does on a GPU."),
    code("tuner = widgets.tuner(eng, prompt_tokens=S.prompt_tokens, new_tokens=S.new_tokens)\ntuner"),
    md("**Sweep the budget** -- the same as pressing the sweep button: a few budgets from 0 to "
       "all experts, with a progress bar. The plot above updates in place."),
    code("points = tuner.run_sweep()\nprint(widgets.describe(points[-1]))"),
    md("**Is a difference real?** Two points differ by more than the noise only when their "
       "error bars do not overlap:"),
    code("for p in points:\n    print(f'{p.budget_experts:4} experts: {p.decode_tps:8.1f} tok/s '\n"
         "          f'(IQR {p.decode_tps_low:.1f}-{p.decode_tps_high:.1f}, {p.runs} runs)')"),
    md("**Where the time goes** for the points just measured: prefill vs decode seconds."),
    code("plots.phase_breakdown(points[:1] + points[-1:])"),
]

NOTEBOOKS["04_fiddler_vs_naive_offloading"] = [
    md("# 04 Fiddler vs naive offloading\n\n"
       "The paper's comparison on this machine: Fiddler (popular experts resident, the rest run "
       "on the CPU or copied, whichever is faster), an LRU expert cache, copying every missing "
       "expert on demand, all experts on the CPU, and accelerate's offloading of whole layers."),
    md(SETUP_MD), code(SETUP + "\nfrom fiddler_nb.benchmarks.matrix import bench, records_table"),
    md("**Run the matrix**: every strategy x GPU expert budget x prompt length, with a "
       "warm-up, medians of repeats, and a check that all strategies produce the same tokens."),
    code("records = bench(S.model_path(), prompt_lengths=S.prompt_sweep,\n"
         "                new_tokens=S.new_tokens, batches=(1,), repeats=2)\n"
         "print(records_table(records))"),
    md("**Decode tokens/s against the budget**, one line per strategy. On a CPU-only machine "
       "the 'GPU' is the CPU, so no strategy can win by overlapping: the figure shows the "
       "mechanics; on a GPU it shows the paper's gap."),
    code("plots.tokens_per_s_vs_budget(measured=records, prompt_tokens=S.prompt_sweep[-1])"),
    md("**Prefill vs decode per strategy** with no expert resident (budget 0, where the "
       "strategies differ most) at the longest prompt: long prompts favour copying hot "
       "experts, decode favours the CPU."),
    code("plots.phase_breakdown(records, budget=0, prompt_tokens=S.prompt_sweep[-1])"),
]

NOTEBOOKS["05_expert_popularity_and_placement"] = [
    md("# 05 Expert popularity and placement\n\n"
       "Fiddler fills the GPU with the experts the router picks most often. This notebook "
       "records routing popularity, shows which experts each placement policy keeps on the "
       "GPU, and measures how often decode finds its expert resident."),
    md(SETUP_MD), code(SETUP),
    md("**Load, and record routing popularity** on a calibration set (`S.load()` already "
       "calibrated once; calling `fnb.calibrate` again shows the step and re-places)."),
    code("eng = S.load(execution='cpu')\npop = fnb.calibrate(eng, S.calibration_set())\npop.tokens, pop.source"),
    md("**Popularity heatmap** (share of each layer's routed pairs per expert); outlined "
       "cells are the experts the `popularity` placement keeps on the GPU."),
    code("plots.popularity_heatmap(pop, eng.placement)"),
    md("**Another policy** with the same budget: `layer-balanced` keeps the same number of "
       "experts per layer (the most popular of each layer) -- compare the outlines."),
    code("eng.set_placement('layer-balanced')\nplots.popularity_heatmap(pop, eng.placement)"),
    md("**Hit rate per placement**: run every static policy at this budget and count how many "
       "decode expert-token pairs found their expert resident (the rest ran on the CPU)."),
    code("points = widgets.sweep(eng, [eng.config.expert_budget],\n"
         "                      placements=('popularity', 'layer-balanced', 'first-layers', 'random', 'none'),\n"
         "                      executions=('cpu',), prompt_tokens=S.prompt_tokens, new_tokens=S.new_tokens)\n"
         "plots.hit_rates(points)"),
    md("**Keep the popularity as data**, not as a literal in code: save it and pass it to "
       "`fnb.load(..., popularity=path)` next time."),
    code('path = pop.save(nbmode.output_dir() / "popularity.safetensors")\n'
         "fnb.Popularity.load(path).counts.sum(dim=1)"),
]

NOTEBOOKS["06_plan_a_bigger_model"] = [
    md("# 06 Plan a bigger model\n\n"
       "Will unquantized Mixtral-8x7B (bf16, ~94 GB) run usefully on a 24 GB GPU with *this* "
       "CPU? The planner projects tokens/s from the CPU measured here and a cited GPU preset. "
       "Nothing runs a model: every number below is **projected**."),
    md(SETUP_MD), code(SETUP + "\nfrom fiddler_nb.measure.planner import plan, plan_table, resolve_budget\n"
                              "from fiddler_nb.measure.profiler import profile_hardware"),
    md("**Measure this CPU on a Mixtral expert** and attach a 24 GB GPU preset: the paper's "
       "Quadro RTX 6000 (`S.gpu_preset`, the same in smoke and full mode, so projections compare "
       "with the paper even on a machine with another GPU)."),
    code('prof = profile_hardware("mixtral-8x7b", quick=S.profile_quick, tokens=S.profile_tokens)\n'
         "prof24 = prof.with_gpu_preset(S.gpu_preset)\nprint(prof24.summary())"),
    md("**How many experts fit** on the card after the non-expert weights (~3.2 GB), a 1 GiB "
       "reserve for activations and two copy buffers -- of Mixtral's 256 experts (352 MB each)."),
    code('shape = fnb.get_shape("mixtral-8x7b")\n'
         "fit = resolve_budget(None, shape, prof24.gpu_memory_bytes)\nfit, shape.total_experts"),
    md("**Project every strategy** at budgets from 0 to what fits."),
    code("records = plan(shape, prof24, budgets=S.budgets(fit), prompt_tokens=S.prompt_tokens,\n"
         "               new_tokens=S.new_tokens, samples=S.plan_samples)\nprint(plan_table(records))"),
    md("**Projected decode tokens/s against the budget** (dashed: projected)."),
    code("plots.tokens_per_s_vs_budget(projected=records)"),
    md("**Projected prefill vs decode** at the budget that fits the card."),
    code("plots.phase_breakdown(records, budget=fit)"),
    md("**Explore interactively**: the same tuner as notebook 03, fed with the model shape and "
       "the profile instead of an engine, projects instead of measuring."),
    code('planner_tuner = widgets.tuner(("mixtral-8x7b", prof24), prompt_tokens=S.prompt_tokens,\n'
         "                              new_tokens=S.new_tokens)\nplanner_tuner.run_sweep()\nplanner_tuner"),
]

NOTEBOOKS["07_bring_your_own_model"] = [
    md("# 07 Bring your own model\n\n"
       "Any transformers 5.x MoE checkpoint whose experts use the fused experts interface "
       "(Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V3, PhiMoE, gpt-oss) loads by path."),
    md(SETUP_MD), code(SETUP + "\nimport tempfile"),
    md("**Your checkpoint.** Put its directory in `MY_CHECKPOINT`. Left empty, this notebook "
       "writes a seeded tiny Qwen2-MoE checkpoint (with a shared expert) to a temporary folder "
       "and loads that by path, exactly as it would load yours."),
    code("MY_CHECKPOINT = None  # e.g. '/models/Mixtral-8x7B-Instruct-v0.1'\n"
         "path = MY_CHECKPOINT or fnb.make_tiny_checkpoint(tempfile.mkdtemp() + '/qwen2-moe', arch='qwen2_moe')\n"
         "path"),
    md("**Load it by path** with nothing resident yet (`expert_budget=0`, `placement='none'`): "
       "on a GPU nothing is copied before we know which experts are worth it."),
    code("eng = fnb.load(path, expert_budget=0, placement='none')\neng"),
    md("**Calibrate on your own prompts** (replace `S.calibration_set()` with text like your "
       "workload) to learn which experts your data uses."),
    code("pop = fnb.calibrate(eng, S.calibration_set())\npop.counts"),
    md("**Place the most popular quarter of the experts** on the GPU; the rest stay in CPU "
       "memory. Outlined cells in the heatmap are the resident experts."),
    code("eng.set_placement('popularity')\neng.set_expert_budget(eng.num_layers * eng.num_experts // 4)\n"
         "plots.popularity_heatmap(pop, eng.placement)"),
    md("**Generate** and read the per-phase statistics."),
    code("res = eng.generate(S.prompt(), max_new_tokens=S.new_tokens)\nprint(res.stats.table())"),
    md("**Tune it** with the same widget as notebook 03."),
    code("tuner = widgets.tuner(eng, prompt_tokens=S.prompt_tokens, new_tokens=S.new_tokens)\n"
         "tuner.run()\ntuner"),
]

NOTEBOOKS["08_compressed_experts"] = [
    md("# 08 Compressed experts (int8, int4)\n\n"
       "Decode speed on CPU experts is bounded by the bytes of expert weights read per token, "
       "and host memory by the bytes of all experts. Storing the routed experts as int8 (one "
       "scale per output channel) or int4 (one scale per group of inputs) cuts both. This "
       "notebook measures what each format costs in accuracy on the same model."),
    md(SETUP_MD), code(SETUP + "\nfrom fiddler_nb.benchmarks.format_compare import compare_formats"),
    md("**Load the model in each format** (experts are quantized while the checkpoint is read) "
       "and measure expert memory, decode tokens/s, the relative error of every expert's output "
       "against the checkpoint's own dtype, and how often the top-1 next token agrees."),
    code("points = compare_formats(S.model_path(), formats=(None, 'bf16', 'int8', 'int4'),\n"
         "                         prompts=[S.prompt()], new_tokens=S.new_tokens)\n"
         "[(p.expert_format, p.expert_bytes, round(p.decode_tps, 1), round(p.rel_expert_error, 4),\n"
         "  p.top1_agreement) for p in points]"),
    md("**Memory vs speed vs error.** In smoke mode (tiny model on a CPU) the timings show the "
       "mechanics only; memory and error are what they would be at any size."),
    code("plots.format_tradeoff(points)"),
    md("**One engine, its memory report.** `eng.memory()` splits host bytes of experts by format "
       "from what the fast device holds (non-expert weights, resident experts, scratch slots, "
       "reserve)."),
    code("eng = fnb.load(S.model_path(), expert_dtype='int8')\nprint(eng)\n"
         "print(eng.memory().table())"),
    md("**Faster, not exact: int8 activations.** llama.cpp multiplies Q8_0 / Q4_0 weights by "
       "activations rounded to 8 bits per 32 inputs (integer dot products). "
       "`fnb.load(..., allow_activation_quant=True)` (or `eng.set_activation_quant(True)`) lets "
       "our CPU kernels do the same for int8 / int4 experts; the '+q8' points below show what "
       "it adds to each format's error. It is never the default."),
    code("q8_points = compare_formats(S.model_path(), formats=(None, 'int8', 'int4'),\n"
         "                            prompts=[S.prompt()], new_tokens=S.new_tokens,\n"
         "                            activation_quant=True)\n"
         "[(p.expert_format, round(p.rel_expert_error, 4), p.top1_agreement) for p in q8_points]"),
    md("**Your own file.** A GGUF file (or MXFP4 gpt-oss checkpoint) loads as it is. Its reference "
       "is the file's own values dequantized by the `gguf` package (`gguf_reference`, written "
       "once next to the file); bf16 / int8 / int4 of that reference sit beside the file's own "
       "format. Set `FIDDLER_NB_GGUF=/path/model.gguf` to use yours; without it a tiny Mixtral "
       "Q4_0 file is made here."),
    code("import os\nfrom fiddler_nb.benchmarks.format_compare import gguf_reference\n"
         "gguf = os.environ.get('FIDDLER_NB_GGUF') or fnb.make_tiny_gguf(\n"
         "    nbmode.output_dir() / 'nb08' / 'tiny-q4_0.gguf', 'mixtral', 'Q4_0', dense_type='Q8_0')\n"
         "file_points = compare_formats(gguf_reference(gguf), formats=('int8', 'int4'),\n"
         "                              prompts=[S.prompt()], new_tokens=S.new_tokens,\n"
         "                              activation_quant=True, files=[gguf])\n"
         "plots.format_tradeoff(file_points, title='your file beside our formats')"),
]


NOTEBOOKS["09_your_model"] = [
    md("# 09 Your own model: inspect it, auto-tune it for your workload, chat with it\n\n"
       "Point at a checkpoint folder, see what fits on the fast device for the prompts you "
       "will run, let `fnb.autotune` measure the settings that matter on this machine, save "
       "the plan, and talk to the model with the answer streaming in."),
    md(SETUP_MD), code(SETUP),
    md("**Your checkpoint.** Put its folder in `MY_CHECKPOINT` (any transformers 5.x MoE "
       "checkpoint; an instruct model brings its chat template). Left empty, smoke mode uses "
       "the embedded tiny Mixtral (random weights: its answers are gibberish bytes, the "
       "machinery is real) and full mode a Mixtral-8x7B-shaped random checkpoint."),
    code("MY_CHECKPOINT = None  # e.g. '/models/Qwen3-30B-A3B-Instruct-2507'\n"
         "path = MY_CHECKPOINT or S.model_path()\npath"),
    md("**Your workload**: prompt length, tokens to generate, batch. It decides the memory kept "
       "free on the fast device for the KV cache and activations, so it decides how many "
       "experts fit there."),
    code("workload = fnb.Workload(prompt_tokens=S.prompt_tokens, new_tokens=S.new_tokens)\nworkload"),
    md("**Load and inspect**: architecture, experts, bytes per expert, the KV cache for the "
       "workload, and how many experts fit -- on this machine's fast device, and (computed from "
       "the same numbers, not measured) on a 24 GB card."),
    code("eng = fnb.load(path, workload=workload)\nfnb.inspect(eng, workload, device_memory='24GiB')"),
    md("**Calibrate on prompts like yours** (replace `S.calibration_set()`): routing popularity "
       "tells `popularity` placement which experts are worth keeping on the GPU."),
    code("pop = fnb.calibrate(eng, S.calibration_set())\npop.counts.sum(dim=1)"),
    md("**Auto-tune.** Candidates (budgets, placements, executions with a GPU; CPU threads "
       "always) are ranked by the planner where it can project, then measured on your workload "
       "until the time limit, and the two leaders measured again until one is ahead by more "
       "than the noise; if none is, they are tied and the plan keeps the simpler setting (the "
       "default thread count, no re-placement) -- its reason says which, with each candidate's "
       "median and interquartile range. Measured and projected tokens/s sit in separate "
       "columns. On a CPU-only machine the notes say why only threads are tuned."),
    code("plan = fnb.autotune(eng, workload, seconds=S.autotune_seconds)\nprint(plan.table())"),
    md("**The measured table as a figure** (projected bars, when there are any, are hatched)."),
    code("plots.autotune(plan)"),
    md("**Save the plan** and load the model with it next time: `fnb.load(path, plan=...)` "
       "starts from the plan's settings (with the popularity recorded above), and any keyword "
       "you pass explicitly wins."),
    code('plan_path = plan.save(nbmode.output_dir() / "plan.json")\n'
         "eng.close()\neng = fnb.load(path, plan=plan_path, popularity=pop)\neng.config"),
    md("**Chat, streaming.** `eng.chat(messages, stream=True)` applies the tokenizer's chat "
       "template and yields text as tokens are produced (break out of the loop to stop)."),
    code("for piece in eng.chat('Hello! What can you do?', max_new_tokens=S.new_tokens, stream=True):\n"
         "    print(piece, end='', flush=True)"),
    md("**Watch a generation live**: the text grows, with decode tokens/s and, per token, the "
       "expert-token pairs that ran resident / on the CPU / after a transfer."),
    code("live = widgets.generate_live(eng, S.prompt(), max_new_tokens=4 * S.new_tokens)"),
    md("**A chat box**: type, *Send*, and the answer streams in; *Stop* ends it early."),
    code("box = widgets.chat(eng, max_new_tokens=S.chat_tokens)\nbox"),
]


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src)
                             for kind, src in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = build(name, cells)
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{name[:2]}-{i:02d}"  # stable ids: rebuilding gives no diff
        nbformat.validate(nb)
        nbformat.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
