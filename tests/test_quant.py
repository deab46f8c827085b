"""The quantization math: error within half a step, edge cases, formats and their errors."""

from __future__ import annotations

import pytest
import torch

import fiddler_nb as fnb
from fiddler_nb.runtime.formats import quant
from fiddler_nb.runtime.errors import FormatError
from fiddler_nb.runtime.kernels.registry import DEFAULT_CHOICE, Matrix, candidates, get_kernel, linear


def _weights(seed: int = 0, n: int = 96, k: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * torch.logspace(-3, 1, n)[:, None]  # [N, K]


FORMATS = [quant.ExpertFormat("int8")] + \
    [quant.ExpertFormat("int8", g) for g in quant.INT8_GROUP_SIZES] + \
    [quant.ExpertFormat("int4", g) for g in quant.INT4_GROUP_SIZES]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.label())
def test_error_is_at_most_half_a_step(fmt):
    w = _weights()
    err = (w - quant.roundtrip(w, fmt, torch.float32)).abs()
    bound = quant.half_step(w, fmt) * (1 + 1e-6)  # fp32 rounding of q * scale
    assert bool((err <= bound).all()), f"{fmt.label()}: max excess {(err - bound).max():.3g}"


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.label())
def test_zero_rows_groups_and_outliers(fmt):
    w = _weights(1)
    w[3] = 0.0  # an all-zero row (and so all-zero groups)
    w[5, :32] = 0.0  # one all-zero group
    w[7, 11] = 1e4  # a large outlier
    deq = quant.roundtrip(w, fmt, torch.float32)
    assert torch.isfinite(deq).all()
    assert torch.equal(deq[3], torch.zeros_like(deq[3]))
    assert torch.equal(deq[5, :32], torch.zeros(32))
    # the max of its row/group is exact, up to the fp16 rounding (up) of a group-wise int8 scale
    rel = 2.0 ** -10 if fmt.matrix_fmt == "int8-group" else 1e-6
    assert deq[7, 11].item() == pytest.approx(1e4, rel=rel)
    assert bool(((w - deq).abs() <= quant.half_step(w, fmt) * (1 + 1e-6)).all())


def test_nibble_pack_round_trips():
    q = torch.randint(-8, 8, (5, 64), dtype=torch.int8)
    assert torch.equal(quant.unpack_nibbles(quant.pack_nibbles(q)), q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.label())
def test_every_kernel_matches_the_dequantized_matmul(fmt, dtype):
    from fiddler_nb.runtime.formats.storage import convert_weight

    w = _weights(2, 64, 128)
    stored = convert_weight(w[None], fmt, False, dtype, on_gpu=True)
    x = torch.randn(3, 128).to(dtype)
    want = x.float() @ quant.roundtrip(w, fmt, dtype).float().t()
    for name in candidates(fmt.matrix_fmt):
        m = Matrix(fmt.matrix_fmt, stored[""][0], stored["_fnb_scale"][0], fmt.group_size)
        got = get_kernel(name).fn(x, m).float()
        tol = 1e-4 if dtype == torch.float32 else 0.05 * want.abs().max().item()
        assert (got - want).abs().max().item() <= tol, f"{name} {fmt.label()} {dtype}"
    if fmt.name == "int4":  # the fast device's nibble copy dequantizes to the same weights
        m = Matrix("int4-nibbles", stored["_fnb_nibbles"][0], stored["_fnb_scale"][0],
                   fmt.group_size)
        from fiddler_nb.runtime.kernels.registry import dequantize_matrix

        assert torch.equal(dequantize_matrix(m, dtype), quant.roundtrip(w, fmt, dtype))
    if fmt.matrix_fmt == "int8-group":  # the fast device dequantizes to the same weights
        from fiddler_nb.runtime.kernels.registry import dequantize_matrix

        m = Matrix("int8-group", stored[""][0], stored["_fnb_scale"][0], fmt.group_size)
        assert torch.equal(dequantize_matrix(m, dtype), quant.roundtrip(w, fmt, dtype))
    got = linear(x, Matrix(fmt.matrix_fmt, stored[""][0], stored["_fnb_scale"][0],
                           fmt.group_size),
                 DEFAULT_CHOICE, fmt.label())
    assert got.shape == (3, 64)


@pytest.mark.parametrize("kwargs,match", [
    (dict(expert_dtype="int3"), "unknown expert_dtype 'int3'"),
    (dict(expert_dtype="int4", group_size=48), "group_size 48 is not supported"),
    (dict(expert_dtype="int4", group_size=128), "does not divide the expert input dim"),
    (dict(expert_dtype="int8", group_size=48), "int8 group_size 48 is not supported"),
    (dict(expert_dtype="int8-g32", group_size=64), "disagree"),
    (dict(expert_dtype="bf16", group_size=64), "applies to expert_dtype='int4' or 'int8' only"),
    (dict(group_size=64), "needs expert_dtype='int4'"),
])
def test_bad_formats_fail_before_loading(kwargs, match, mixtral_path, monkeypatch):
    from fiddler_nb.runtime.engine import factory

    def no_load(*a, **k):
        raise AssertionError("weights were read before the format was checked")
    monkeypatch.setattr(factory, "load_model", no_load)
    with pytest.raises(FormatError, match=match):
        fnb.load(mixtral_path, **kwargs)


def test_formats_report_bytes_and_dtype(mixtral_path):
    sizes = {}
    for fmt in (None, "bf16", "int8", "int8-g32", "int4"):
        engine = fnb.load(mixtral_path, device="cpu", expert_dtype=fmt)
        mem = engine.memory()
        sizes[engine.expert_dtype] = mem.host_experts_total
        assert mem.expert_format == engine.expert_dtype
        assert engine.expert_dtype in repr(engine)
    assert set(sizes) == {"fp32", "bf16", "int8", "int8-g32", "int4-g64"}
    assert sizes["bf16"] == sizes["fp32"] // 2
    assert sizes["int8"] < 0.3 * sizes["fp32"]  # int8 + one fp32 scale per row
    assert sizes["int4-g64"] < 0.6 * sizes["int8"]
    assert sizes["int8"] < sizes["int8-g32"] <= sizes["int8"] * (1 + 2 / 32)  # + fp16 per 32


def test_planner_counts_the_formats_bytes():
    from fiddler_nb.measure.hardware import machine_facts
    from fiddler_nb.measure.planner import plan
    from fiddler_nb.measure.profiler import HardwareProfile

    prof = HardwareProfile("mixtral-8x7b", 4096, 14336, "bfloat16", 3 * 4096 * 14336 * 2,
                           (1, 8), (20.0, 60.0), {"sum_fp32": 25.0}, 25.0, machine_facts())
    prof = prof.with_gpu_preset("rtx-4090-pcie4")
    rec = {f: plan("mixtral-8x7b", prof, budgets=["24GB"], baselines=(), expert_dtype=f)[0]
           for f in ("bf16", "int8", "int4")}
    assert rec["int8"].budget_experts > 1.8 * rec["bf16"].budget_experts  # twice the experts fit
    assert rec["int4"].budget_experts > rec["int8"].budget_experts
    assert rec["int8"].cpu_roofline_decode_tps > 1.9 * rec["bf16"].cpu_roofline_decode_tps
    assert "int4-g64" in rec["int4"].model and any("int8" in n for n in rec["int8"].notes)


def test_int4_refuses_output_dims_the_kernel_cannot_pack():
    with pytest.raises(FormatError, match="divisible by 16.*MixtralExperts.*\\[100\\]"):
        quant.resolve_format("int4", None, (64, 128), (100, 64), "MixtralExperts")
    assert quant.resolve_format("int8", None, (64, 128), (100, 64)).name == "int8"


def test_group_wise_int8_labels_bytes_and_gguf_layout():
    """'int8-g32' <-> ExpertFormat('int8', 32); stored as GGUF Q8_0 blocks are: int8 [N, K] and
    one fp16 scale per 32 inputs, w = q * scale."""
    fmt = quant.resolve_format("int8", 32, (64, 128), (96, 64))
    assert fmt == quant.parse_label("int8-g32") == quant.resolve_format("int8-g32", None)
    assert fmt.label() == "int8-g32" and fmt.matrix_fmt == "int8-group"
    assert fmt.bits_per_weight() == 8.5  # GGUF Q8_0's 34 bytes per 32 weights
    assert quant.resolve_format("int8", None).matrix_fmt == "int8"  # per channel as before
    w = _weights(3)
    q, s = quant.quantize_int8_grouped(w, 32)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert s.dtype == torch.float16 and s.shape == (w.shape[0], w.shape[1] // 32)
    want = (q.float().view(96, 4, 32) * s.float()[..., None]).view(96, 128)
    assert torch.equal(quant.roundtrip(w, fmt, torch.float32), want)
    with pytest.raises(FormatError, match="does not divide"):
        quant.resolve_format("int8", 64, (96,), (64,))
