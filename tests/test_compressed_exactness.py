"""int8 / int4 engines against stock transformers on the dequantized checkpoint.

`fnb.write_dequantized` stores dequant(quant(w)) for every routed expert with the engine's own
scales, so stock transformers on that checkpoint multiplies by exactly the weights the engine's
kernels use. What may still differ is the order of the fp32 accumulation: torch's int8 / int4
kernels apply the scale after summing (sum_k x_k q_k) * s, or per group, while stock sums
x_k (q_k s) with oneDNN's blocking. Each expert output then differs by a few fp32 ulps of
sum_k |x_k w_k| (K <= 128 here: relative error <= K * 2^-24 ~ 1e-5 in the worst case, ~1e-7
typically, as fp32 rounding errors of random sign grow like sqrt(K)), and four layers of
attention and routing carry that to logits of magnitude ~0.7. The largest difference we
measured over the seven architectures and both formats was 3.6e-7 (gpt_oss int8, 2026-11-27);
LOGIT_ATOL = 1e-5 (the float exactness tests' tolerance) leaves ~30x margin and is still far
below the change int8 quantization itself makes to the logits (checked below), so a kernel that
read a wrong scale, group or nibble fails it. Greedy tokens must be identical.
"""

from __future__ import annotations

import pytest
import torch

import fiddler_nb as fnb
from fiddler_nb.runtime.model.adapters import TESTED_ARCHITECTURES

from test_exactness import (PROMPTS, _budgets, _tokens_and_logits, split_latency,
                            sweep_differences)

LOGIT_ATOL = 1e-5
FORMATS = [("int8", None), ("int4", 32)]
EXECUTIONS = ("cpu", "transfer", "auto")


@pytest.mark.parametrize("arch", TESTED_ARCHITECTURES)
def test_int8_engine_matches_stock_on_dequantized(arch, cpu_kernels, tiny_checkpoints, dequantized,
                                                  stock_model):
    check_against_dequantized(arch, "int8", None, tiny_checkpoints, dequantized, stock_model)


def check_against_dequantized(arch, fmt, group, tiny_checkpoints, dequantized, stock_model):
    """Every execution x budget of one architecture and format against stock transformers on
    the dequantized checkpoint (test_compressed_exactness_int4.py runs int4 on the other
    worker)."""
    ref_path = dequantized(arch, fmt, group)
    engine = fnb.load(tiny_checkpoints[arch], device="cpu", expert_budget=0, placement="none",
                      execution="cpu", expert_dtype=fmt, group_size=group)
    assert engine.expert_dtype.startswith(fmt)
    engine.set_latency_model(split_latency(engine.expert_bytes))
    engine.set_popularity(fnb.calibrate(engine, PROMPTS))
    engine.set_placement("popularity")
    inputs = engine.encode(PROMPTS)
    want_tokens, want_logits = _tokens_and_logits(stock_model(ref_path), inputs)
    failures, worst = [], 0.0
    for budget in _budgets(engine):
        engine.set_expert_budget(budget)
        total = engine.num_layers * engine.num_experts
        for execution in EXECUTIONS if budget < total else EXECUTIONS[:1]:  # all resident: same
            engine.set_execution(execution)
            tokens, logits = _tokens_and_logits(engine.model, inputs)
            err = (logits - want_logits).abs().max().item()
            worst = max(worst, err)
            if not torch.equal(tokens, want_tokens) or err > LOGIT_ATOL:
                failures.append(f"{execution}/budget={budget}: max|dlogit|={err:.2e}, tokens "
                                f"{tokens.tolist()} != {want_tokens.tolist()}")
    assert not failures, f"{arch} {fmt}: {len(failures)} combinations differ:\n" + \
        "\n".join(failures)


def test_quantization_changes_logits_far_more_than_tolerance(tiny_checkpoints, stock_model):
    """The tolerance is meaningful: the float model and its int8 version differ by >> it."""
    path = tiny_checkpoints["mixtral"]
    engine = fnb.load(path, device="cpu", execution="cpu", expert_dtype="int8")
    inputs = engine.encode(PROMPTS)
    _, float_logits = _tokens_and_logits(stock_model(path), inputs)
    _, int8_logits = _tokens_and_logits(engine.model, inputs)
    assert (float_logits - int8_logits).abs().max().item() > 10 * LOGIT_ATOL


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fmt,group", FORMATS)
@pytest.mark.parametrize("arch", ["mixtral", "gpt_oss"])
def test_cuda_compressed_transfers_and_residents_match_stock(arch, fmt, group, tiny_checkpoints,
                                                             dequantized, stock_model):
    """On a GPU: resident rows and scratch slots hold the compressed bytes (int4: the nibble
    copy), dequantized on the GPU before its GEMM; the CPU runs the packed kernels. GPU GEMMs
    (TF32 off by default for fp32) differ from oneDNN's order, hence 1e-4 here."""
    ref = stock_model(dequantized(arch, fmt, group))
    engine = fnb.load(tiny_checkpoints[arch], device="cuda", expert_budget=0, placement="none",
                      execution="cpu", expert_dtype=fmt, group_size=group)
    engine.set_latency_model(split_latency(engine.expert_bytes))
    assert engine.memory().pinned_host_bytes == engine.memory().host_experts_total
    inputs = engine.encode(PROMPTS)
    want_tokens, want_logits = _tokens_and_logits(ref.to("cuda"), inputs)
    failures = sweep_differences(engine, inputs, want_tokens, want_logits, EXECUTIONS, 1e-4)
    assert not failures, "; ".join(failures)
