"""Prefill-128 with and without the AMX tile kernels, interleaved with stock transformers bf16.

    python scripts/amx_prefill.py CKPT OUT.json int8-g32 int4-g32

For each format: a CPU-only engine (dense weights in the same format) with the measured kernel
choice, loaded once with AMX and once with FIDDLER_NB_AMX=0 (its own measured choice), and stock
transformers on the checkpoint's bf16 weights; ROUNDS interleaved rounds after a warm-up, 2
threads. Prints one JSON line per format and writes them all to OUT.json.
"""
import gc, json, os, statistics, sys, time, torch
import fiddler_nb as fnb
from fiddler_nb.runtime.kernels import native
PATH, OUT = sys.argv[1], sys.argv[2]
PREFILL, ROUNDS, THREADS = 128, 4, 2
torch.set_num_threads(THREADS)
ids = torch.randint(0, 256, (1, PREFILL), generator=torch.Generator().manual_seed(0))
def amx(on):
    if on: os.environ.pop("FIDDLER_NB_AMX", None)
    else: os.environ["FIDDLER_NB_AMX"] = "0"
def prefill(model):
    with torch.inference_mode():
        t0 = time.perf_counter(); model(ids); return PREFILL / (time.perf_counter() - t0)
out = {"machine": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": "),
       "cpu_capability": torch.backends.cpu.get_cpu_capability(), "amx_available": native.amx_available(),
       "threads": THREADS, "prefill_tokens": PREFILL, "rounds": ROUNDS, "rows": {}}
stock = fnb.load(PATH, device="cpu", execution="cpu", expert_budget=0)
impl = stock._previous_impl or "grouped_mm"
for fmt in sys.argv[3:]:
    dense = fmt.split("-")[0]
    engines = {}
    for on in (True, False):
        amx(on)
        engines[on] = fnb.load(PATH, device="cpu", execution="cpu", expert_budget=0,
                               expert_dtype=fmt, dense_dtype=dense, dtype="bfloat16")
    samples = {"stock": [], "amx": [], "no-amx": []}
    for r in range(ROUNDS + 1):
        order = [("stock", None), ("amx", True), ("no-amx", False)]
        order = order[r % 3:] + order[:r % 3]
        for name, on in order:
            if name == "stock":
                stock.model.set_experts_implementation(impl); amx(True); v = prefill(stock.model)
                stock.model.set_experts_implementation("fiddler")
            else:
                amx(on); v = prefill(engines[on].model)
            if r: samples[name].append(v)
    amx(True)
    row = {k: {"median": statistics.median(v), "samples": v} for k, v in samples.items()}
    row["amx_x_no_amx"] = statistics.median(a / b for a, b in zip(samples["amx"], samples["no-amx"]))
    row["amx_x_stock"] = statistics.median(a / b for a, b in zip(samples["amx"], samples["stock"]))
    row["no_amx_x_stock"] = statistics.median(a / b for a, b in zip(samples["no-amx"], samples["stock"]))
    row["notes_amx"] = [n for n in engines[True].notes if "kernel" in n.lower()]
    out["rows"][fmt] = row
    print(json.dumps({fmt: row}), flush=True)
    for e in engines.values(): e.close()
    del engines; gc.collect()
with open(OUT, "w") as f:
    json.dump(out, f, indent=1)
