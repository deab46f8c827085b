"""fiddler_nb (CPU-only engine) beside llama.cpp's llama-bench and stock transformers, on the same
weights, in interleaved rounds; one JSON line per measurement on stdout.

    python scripts/llama_side_by_side.py --checkpoint CKPT --llama-bench PATH/llama-bench \
        --gguf bf16=CKPT-bf16.gguf --gguf int8=CKPT-q8_0.gguf --gguf int4=CKPT-q4_0.gguf

CKPT: a bf16 safetensors checkpoint (e.g. `fnb.make_random_checkpoint(..., vocab_size=32000)`);
the GGUF files: the same weights through llama.cpp's convert_hf_to_gguf.py + llama-quantize
(docs/benchmarks.md). Each format runs fiddler_nb quantizing the safetensors experts at load
(bf16 / int8-g32 = Q8_0's layout / int4-g32, dense weights in the same format) and, with
--gguf-direct, fiddler_nb loading the GGUF file itself. A script, not the package: it runs a
binary the package does not ship.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time

import torch

import fiddler_nb as fnb

FORMATS = {  # --gguf key -> fnb.load keywords for the same bits from the safetensors checkpoint
    "bf16": dict(expert_dtype="bf16"),
    "int8": dict(expert_dtype="int8", group_size=32, dense_dtype="int8"),  # Q8_0's layout
    "int4": dict(expert_dtype="int4", group_size=32, dense_dtype="int4"),  # Q4_0's group
}
VOCAB_MARGIN = 1000  # prompt ids drawn below vocab_size - margin (never special tokens)


def prompts(vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hi = vocab - VOCAB_MARGIN
    return torch.randint(0, hi, (1, 16), generator=g), torch.randint(0, hi, (1, 128), generator=g)


def fnb_round(eng, new: int) -> tuple[float, float]:
    p16, p128 = prompts(eng.model.config.vocab_size)
    eng.generate(p16, max_new_tokens=4)  # warm-up
    dec = eng.generate(p16, max_new_tokens=new, min_new_tokens=new).stats.decode_tokens_per_s
    pre = eng.generate(p128, max_new_tokens=1).stats.prefill_tokens_per_s
    return dec, pre


def llama_round(binary: str, gguf: str, threads: int, new: int) -> tuple[float, float]:
    out = subprocess.run([binary, "-m", gguf, "-t", str(threads), "-p", "128", "-n", str(new),
                          "-r", "1", "-o", "json"], capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0)
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0)
    return tg, pp


def stock_round(path: str, new: int) -> tuple[float, float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    p16, p128 = prompts(model.config.vocab_size)
    with torch.inference_mode():
        model.generate(p16, max_new_tokens=4, do_sample=False)
        t = time.perf_counter()
        model.generate(p16, max_new_tokens=1, do_sample=False)
        first = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(p16, max_new_tokens=new + 1, min_new_tokens=new + 1, do_sample=False)
        total = time.perf_counter() - t
        t = time.perf_counter()
        model(p128)
        prefill = time.perf_counter() - t
    return new / (total - first), p128.shape[1] / prefill


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--gguf", action="append", default=[], metavar="FORMAT=FILE",
                    help=f"FORMAT one of {', '.join(FORMATS)}")
    ap.add_argument("--gguf-direct", action="store_true", help="also fnb.load each GGUF file")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"machine": platform.processor(), "capability":
                      torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
                      "torch": torch.__version__, "new_tokens": args.new_tokens,
                      "prompt_tokens": [16, 128]}), flush=True)
    dec, pre = stock_round(args.checkpoint, args.new_tokens)
    print(json.dumps({"engine": "stock transformers bf16", "decode_tps": dec,
                      "prefill128_tps": pre}), flush=True)
    runs = []
    for item in args.gguf:
        key, _, gguf = item.partition("=")
        runs.append((key, args.checkpoint, FORMATS[key], gguf))
        if args.gguf_direct:
            runs.append((f"{key} (GGUF file)", gguf, {}, gguf))
    for name, path, kwargs, gguf in runs:
        t = time.perf_counter()
        eng = fnb.load(path, device="cpu", threads=args.threads, expert_budget=0, **kwargs)
        print(json.dumps({"format": name, "load_s": time.perf_counter() - t,
                          "expert_dtype": eng.expert_dtype, "notes": list(eng.notes)}), flush=True)
        for r in range(args.rounds):  # interleaved: one of ours, one of theirs
            dec, pre = fnb_round(eng, args.new_tokens)
            tg, pp = llama_round(args.llama_bench, gguf, args.threads, args.new_tokens)
            print(json.dumps({"format": name, "round": r, "fnb_decode_tps": dec,
                              "llama_decode_tps": tg, "decode_ratio": dec / tg,
                              "fnb_prefill128_tps": pre, "llama_prefill128_tps": pp,
                              "prefill_ratio": pre / pp}), flush=True)
        eng.close()


if __name__ == "__main__":
    main()
