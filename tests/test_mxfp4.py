"""gpt-oss with MXFP4 experts, kept in MXFP4: the kernel against transformers' own MXFP4
dequantization, and the engine against stock transformers on the checkpoint transformers itself
dequantizes (Mxfp4Config(dequantize=True)), for every execution policy and budget.

Tolerance: every MXFP4 weight (an e2m1 value times a power of two) is exact in float32 and
bfloat16, so engine and stock multiply by identical weights; only the fp32 accumulation order of
F.linear over a chunk of rows vs transformers' batched matmul differs (K = 64 here: a few ulps).
We measured 1.2e-7 on the logits; LOGIT_ATOL = 1e-5 as for the other compressed formats.
"""

from __future__ import annotations

import json

import pytest
import torch

import fiddler_nb as fnb
from fiddler_nb.runtime.formats import mxfp4
from fiddler_nb.runtime.formats.matrix import Matrix
from fiddler_nb.runtime.formats.mxfp4_checkpoint import make_tiny_mxfp4_checkpoint
from fiddler_nb.runtime.kernels.registry import dequantize_matrix
from fiddler_nb.runtime.kernels.torch_mxfp4 import mxfp4_linear

from test_exactness import (PROMPTS, _tokens_and_logits, split_latency, sweep_against,
                            sweep_differences)

LOGIT_ATOL = 1e-5
EXECUTIONS = ("cpu", "transfer", "auto")


@pytest.fixture(scope="module")
def mxfp4_path(tmp_path_factory) -> str:
    return str(make_tiny_mxfp4_checkpoint(tmp_path_factory.mktemp("mx") / "gpt-oss"))


@pytest.fixture(scope="module")
def mxfp4_reference(mxfp4_path):
    from transformers import AutoModelForCausalLM, Mxfp4Config

    return AutoModelForCausalLM.from_pretrained(
        mxfp4_path, quantization_config=Mxfp4Config(dequantize=True), dtype=torch.float32).eval()


def test_decoding_matches_transformers_dequantization():
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 40, 4, 16), dtype=torch.uint8, generator=gen)  # [E,N,K/32,16]
    scales = torch.randint(110, 140, (3, 40, 4), dtype=torch.uint8, generator=gen)
    want = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)  # [E, K, N]
    for e in range(3):
        got = mxfp4.dequantize(blocks[e].reshape(40, -1), scales[e], torch.float32,
                               rows_per_chunk=16)  # chunks that do not divide N
        assert torch.equal(got, want[e].t())


def test_kernel_is_decode_then_linear_and_gpu_path_decodes_the_same():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(600, 64, generator=gen)  # more rows than one chunk
    blocks, scales = mxfp4.quantize(w)
    m = Matrix("mxfp4", blocks, scales, mxfp4.GROUP)
    x = torch.randn(5, 64, generator=gen)
    dense = mxfp4.dequantize(blocks, scales, torch.float32)
    assert torch.allclose(mxfp4_linear(x, m), x @ dense.t(), atol=1e-5)
    assert torch.equal(dequantize_matrix(m, torch.float32), dense)
    assert (dense - w).abs().max() <= w.abs().max() / 4  # a sane 4-bit approximation


def test_mxfp4_engine_matches_stock_dequantized(mxfp4_path, mxfp4_reference):
    engine = fnb.load(mxfp4_path, device="cpu", dtype="float32", expert_budget=0,
                      placement="none", execution="cpu")
    assert engine.expert_dtype == "mxfp4"
    assert engine.memory().expert_format == "mxfp4"
    failures = sweep_against(engine, mxfp4_reference, EXECUTIONS, LOGIT_ATOL)
    assert not failures, "; ".join(failures)


def test_experts_stay_packed_and_bytes_count_them(mxfp4_path):
    engine = fnb.load(mxfp4_path, device="cpu", execution="cpu")
    assert engine.config.dtype == "bfloat16"  # the checkpoint's dtype for the rest
    experts = engine.layers[0].module
    assert experts.gate_up_proj.dtype == torch.uint8
    hidden = inter = 64  # tiny gpt-oss: gate_up [2I, H], down [H, I]; biases 2I + H (bf16)
    weights = 3 * hidden * inter
    assert engine.expert_bytes == weights // 2 + weights // 32 + (3 * inter) * 2
    assert engine.generate("Hello", max_new_tokens=3).token_ids.shape[1] == 3


def test_expert_dtype_converts_and_states_the_error(mxfp4_path):
    engine = fnb.load(mxfp4_path, device="cpu", expert_dtype="int8", execution="cpu")
    assert engine.expert_dtype == "int8"
    assert any("relative RMS" in n for n in engine.notes)
    engine = fnb.load(mxfp4_path, device="cpu", expert_dtype="bf16", execution="cpu")
    assert engine.generate("Hello", max_new_tokens=2).token_ids.shape[1] == 2


def test_missing_scales_is_one_line(mxfp4_path, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(mxfp4_path, bad)
    shard = next(bad.glob("*.safetensors"))
    tensors = load_file(str(shard))
    del tensors["model.layers.1.mlp.experts.down_proj_scales"]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(fnb.CheckpointError, match="down_proj_scales") as info:
        fnb.load(bad, device="cpu")
    assert "\n" not in str(info.value)
    assert json.loads((bad / "config.json").read_text())["quantization_config"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_mxfp4_decoded_in_the_scratch_slot_matches(mxfp4_path, mxfp4_reference):
    engine = fnb.load(mxfp4_path, device="cuda", dtype="float32", expert_budget=0,
                      placement="none", execution="cpu")
    engine.set_latency_model(split_latency(engine.expert_bytes))
    inputs = engine.encode(PROMPTS)
    want_tokens, want_logits = _tokens_and_logits(mxfp4_reference.to("cuda"), inputs)
    failures = sweep_differences(engine, inputs, want_tokens, want_logits, EXECUTIONS, 1e-4)
    assert not failures, "; ".join(failures)
