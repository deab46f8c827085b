"""The package's compiled CPU kernels: every SIMD variant this CPU runs against the plain scalar
reference, the reference against dequantize + matmul, and the fallback when nothing compiles.

Tolerance: the kernels multiply the exact weights (q * scale is exact in fp32) by fp32
activations and sum in fp32, in another order than the double-precision reference: the error is
a few fp32 ulps of sum_k |x_k w_k|, i.e. <= K * 2^-24 relative to that sum in the worst case.
REL = 1e-5 of sum |x w| (K <= 300 here: 300 * 6e-8 = 1.8e-5 worst case, ~1e-6 typically) fails
any misread weight, scale, group or nibble, which moves a result by ~1/K of that sum or more.
Outputs in bf16 / fp16 add one rounding of the result (2^-8 / 2^-11 relative).
"""

from __future__ import annotations

import os

import pytest
import torch

from fiddler_nb.runtime.formats import quant
from fiddler_nb.runtime.formats.storage import convert_weight
from fiddler_nb.runtime.kernels import native
from fiddler_nb.runtime.kernels.native_build import ISA_NAMES, load_library
from fiddler_nb.runtime.kernels.registry import (DEFAULT_CHOICE, GEMM_KERNELS, Matrix,
                                                 default_kernel, dequantize_matrix, get_kernel)

pytestmark = pytest.mark.skipif(not native.available(),
                                reason=f"native kernels unavailable: {native.unavailable_reason()}")

REL = 1e-5
OUT_ROUNDING = {torch.float32: 0.0, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
FORMATS = [quant.ExpertFormat("fp32"), quant.ExpertFormat("bf16"), quant.ExpertFormat("fp16"),
           quant.ExpertFormat("int8"), quant.ExpertFormat("int8", 32),
           quant.ExpertFormat("int8", 64), quant.ExpertFormat("int4", 32, int4_layout="nibbles"),
           quant.ExpertFormat("int4", 128, int4_layout="nibbles")]
TOKENS = (1, 2, 3, 7, 8, 9, 17)  # both tiles (4 rows x 1-2 tokens, 1 row x 8/4/2/1 tokens)


def _variants() -> list[str]:
    lib = load_library()
    return [isa for isa in ISA_NAMES[1:] if lib.isa_supported(isa)]


def _matrix(fmt: quant.ExpertFormat, n: int, k: int, act: torch.dtype, seed: int = 0) -> Matrix:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.logspace(-2, 0, n)[:, None]  # [N, K]
    st = convert_weight(w[None], fmt, False, act, on_gpu=False)
    return Matrix(fmt.matrix_fmt, st[""][0], st.get("_fnb_scale", [None])[0], fmt.group_size)


def _shape_for(fmt: quant.ExpertFormat) -> tuple[int, int]:
    """N not a multiple of the 4-row tile; K with a tail past the last 32-block where allowed."""
    return (37, 300) if fmt.group_size is None else (37, 256)


def _check(got: torch.Tensor, x: torch.Tensor, m: Matrix, what: str) -> None:
    w = dequantize_matrix(m, torch.float32).double()  # [N, K] exact weights
    want = x.double() @ w.t()  # [n, N]
    bound = (x.double().abs() @ w.abs().t()) * REL + want.abs() * OUT_ROUNDING[got.dtype] + 1e-30
    excess = ((got.double() - want).abs() - bound).max().item()
    assert excess <= 0, f"{what}: max excess over the tolerance {excess:.3g}"


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.matrix_fmt + "-" + f.label())
@pytest.mark.parametrize("act", [torch.float32, torch.bfloat16, torch.float16])
def test_every_variant_matches_the_reference(fmt, act):
    n_out, k_in = _shape_for(fmt)
    m = _matrix(fmt, n_out, k_in, act)
    x_dtype = fmt.float_dtype or act
    for tokens in TOKENS:
        x = torch.randn(tokens, k_in).to(x_dtype)
        ref = native.native_linear(x, m, "ref")
        _check(ref, x, m, f"ref {fmt.label()} T={tokens}")
        for isa in _variants():
            got = native.native_linear(x, m, isa)
            assert got.dtype == x_dtype and got.shape == (tokens, n_out)
            _check(got, x, m, f"{isa} {fmt.label()} {act} T={tokens}")


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f.is_quantized],
                         ids=lambda f: f.matrix_fmt + "-" + f.label())
@pytest.mark.parametrize("act", [torch.float32, torch.bfloat16, torch.float16])
def test_native_dequantization_is_the_references_weights(fmt, act):
    """Bit for bit the weights dequantize_matrix gives (q * scale in fp32, one rounding), in
    every variant: the many-token kernel (dequantize + oneDNN) is the reference's GEMM."""
    n_out, k_in = _shape_for(fmt)
    m = _matrix(fmt, n_out, k_in, act)
    want = dequantize_matrix(m, act)
    old = os.environ.get("FIDDLER_NB_ISA")
    try:
        for isa in ["ref"] + _variants():
            os.environ["FIDDLER_NB_ISA"] = isa
            native._isa_code.cache_clear()
            got = native.native_dequantize(m, act)
            assert got.dtype == act and torch.equal(got, want), isa
    finally:
        os.environ.pop("FIDDLER_NB_ISA", None) if old is None else \
            os.environ.__setitem__("FIDDLER_NB_ISA", old)
        native._isa_code.cache_clear()
    x = torch.randn(70, k_in).to(act)
    old_chunk = native.DEQUANT_CHUNK_BYTES
    try:  # chunks of rows (a tail chunk too) give F.linear's result up to the GEMM's sum order
        for chunk in (old_chunk, 16 * k_in * x.element_size()):
            native.DEQUANT_CHUNK_BYTES = chunk
            got = native.native_dequant_linear(x, m)
            want_y = torch.nn.functional.linear(x, want)
            assert got.shape == want_y.shape and got.dtype == act
            _check(got, x.float(), Matrix("float", want.float()), f"chunked {chunk}")
    finally:
        native.DEQUANT_CHUNK_BYTES = old_chunk


# ---- many-token kernels: panels x register tiles ---------------------------------------------
# Shapes past one step of inputs (512 fp32 / 1024 bf16: partial sums carried between steps, a
# short last step), past one panel of rows (several panels, a tail panel and single rows) and a
# K with a tail past the last 32-block (not tiled: the per-row kernels run it).
TILE_SHAPES = ((90, 1152), (37, 256))
# 6- and 2-token tiles and a single token left over; AMX tiles of 16 + 9 and 32 + 8 tokens
TILE_TOKENS = (1, 2, 5, 6, 7, 13, 25, 40)


def _tile_reference_weights(m: Matrix, isa: str, act: torch.dtype, mode: int) -> Matrix:
    """The weights a tile kernel multiplies: the exact ones, or (bf16 panels where the CPU and
    variant run vdpbf16ps) rounded to bf16 as dequantize_matrix rounds them."""
    lib = native.library().lib
    kind = native._kind_of(m)[0]
    k_in = m.data.shape[1] * (2 if m.fmt == "int4-blocks" else 1)
    tiled = k_in % 32 == 0  # else the per-row kernels run it
    if tiled and act == torch.bfloat16 and lib.fnb_bf16_dot(ISA_NAMES.index(isa), kind, mode):
        return Matrix("float", dequantize_matrix(m, torch.bfloat16).float())
    return m


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.matrix_fmt + "-" + f.label())
@pytest.mark.parametrize("act", [torch.float32, torch.bfloat16])
def test_tile_kernels_match_the_reference(fmt, act):
    """fp32 panels: the exact weights (REL, as the per-row kernels); bf16 panels: the weights
    rounded to bf16 (products of two bf16 numbers are exact in fp32, so the same REL on the
    sums), in every variant, over several steps, panels and token tiles."""
    x_dtype = fmt.float_dtype or act
    for n_out, k_in in TILE_SHAPES + ((37, 300),) * (fmt.group_size is None):
        if k_in % (fmt.group_size or 1):
            continue
        m = _matrix(fmt, n_out, k_in, act)
        for tokens in TILE_TOKENS:
            x = torch.randn(tokens, k_in).to(x_dtype)
            for isa in ["ref"] + _variants():  # ref: no tiles, the same numbers
                for mode in (native.TILE_F32, native.TILE_BF16, native.TILE_AMX):
                    got = native.native_linear(x, m, isa, tile=mode)
                    assert got.dtype == x_dtype and got.shape == (tokens, n_out)
                    ref = _tile_reference_weights(m, isa, x_dtype, mode)
                    _check(got, x, ref, f"{isa} tile {mode} {fmt.label()} {act} {n_out}x{k_in} "
                                        f"T={tokens}")


def test_tile_kernels_are_registered_and_bf16_panels_only_where_they_run():
    from fiddler_nb.runtime.kernels.registry import (NATIVE_AMX_TILE_KERNELS,
                                                     NATIVE_BF16_TILE_KERNELS,
                                                     NATIVE_TILE_KERNELS, candidates)

    for fmt, name in NATIVE_TILE_KERNELS.items():
        assert name in candidates(fmt)
        assert (NATIVE_BF16_TILE_KERNELS[fmt] in candidates(fmt)) == native.bf16_dot_available()
        assert (NATIVE_AMX_TILE_KERNELS[fmt] in candidates(fmt)) == native.amx_available()


def test_strided_rows_and_threads():
    """A non-contiguous activation view and many threads give the same result as one thread."""
    m = _matrix(quant.ExpertFormat("bf16"), 1024, 512, torch.bfloat16)  # > the serial size
    x = torch.randn(3, 1024).to(torch.bfloat16)[:, ::2]  # [3, 512] with row stride 1024
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.native_linear(x, m)
        torch.set_num_threads(4)
        many = native.native_linear(x, m)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, many)  # each row's sum is computed the same way by any thread
    _check(many, x, m, "strided")


def test_kernel_choice_defaults_to_native_then_onednn():
    assert default_kernel("float", 1, torch.bfloat16) == "native-float"
    assert default_kernel("int8-group", 64, torch.bfloat16) == "native-int8g"
    assert default_kernel("int4-blocks", 8, torch.bfloat16) == "native-int4"
    assert default_kernel("float", 128, torch.bfloat16) == "onednn"  # prefill: oneDNN's GEMM
    assert default_kernel("int8", 128, torch.bfloat16) == "native-dequant-int8"  # + oneDNN
    m = _matrix(quant.ExpertFormat("int8"), 8, 64, torch.float32)
    assert DEFAULT_CHOICE.kernel_for("int8", m, torch.zeros(1, 64)).name == "native-int8"


def test_no_compiler_falls_back_to_torch(monkeypatch, mixtral_path):
    import fiddler_nb as fnb

    monkeypatch.setenv("FIDDLER_NB_CC", "/nonexistent/cc")
    assert not native.available()
    assert "FIDDLER_NB_CC='/nonexistent/cc'" in native.unavailable_reason()
    assert default_kernel("float", 1, torch.float32) == "onednn"
    assert default_kernel("int8", 1, torch.float32) == "int8pack"
    engine = fnb.load(mixtral_path, device="cpu", expert_dtype="int4", execution="cpu",
                      expert_budget=0)
    assert engine._state.store.storage.fmt.matrix_fmt == "int4"  # torch's pack for torch's kernel
    assert any("torch's only" in n and "FIDDLER_NB_CC" in n for n in engine.notes)
    assert sum(1 for n in engine.notes if "CPU kernels" in n) == 1  # said once
    out = engine.generate("Hello", max_new_tokens=2)
    assert out.token_ids.shape[-1] == 2
    monkeypatch.delenv("FIDDLER_NB_CC")
    engine = fnb.load(mixtral_path, device="cpu", expert_dtype="int4")
    assert engine._state.store.storage.fmt.matrix_fmt == "int4-blocks"
    assert not any("CPU kernels" in n for n in engine.notes)


@pytest.mark.parametrize("fmt", [None, "bf16", "int8", "int8-g32", "int4"])
def test_layer_call_matches_the_per_expert_path(fmt, mixtral_path, monkeypatch):
    """One native call per layer gives the per-expert path's outputs (same roundings) and runs
    for every CPU layer of a Mixtral decode."""
    import fiddler_nb as fnb
    from fiddler_nb.runtime.engine import experts as experts_mod

    dtype = "bfloat16" if fmt in ("bf16", "int8-g32") else None  # bf16 activations too
    engine = fnb.load(mixtral_path, device="cpu", expert_dtype=fmt, execution="cpu",
                      expert_budget=0, dtype=dtype)
    calls = []
    real = experts_mod.run_layer
    monkeypatch.setattr(experts_mod, "run_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
    inputs = engine.encode(["The quick brown fox", "Hello"])
    with torch.inference_mode():
        layer_logits = engine.model(**inputs).logits
    assert len(calls) == engine.num_layers  # every layer in one call
    store = engine._state.store
    monkeypatch.setattr(store, "layer_call_blocker", "test: per-expert path")
    with torch.inference_mode():
        expert_logits = engine.model(**inputs).logits
    assert len(calls) == engine.num_layers
    tol = 1e-5 if layer_logits.dtype == torch.float32 else 2e-2  # bf16: order of fp32 sums
    assert (layer_logits.float() - expert_logits.float()).abs().max().item() <= tol


@pytest.mark.parametrize("fmt", [None, "bf16", "int8", "int8-g32", "int4"])
@pytest.mark.parametrize("tile", ["native-tile", "native-bf16tile", "native-amxtile"])
def test_tile_kernels_in_the_layer_call_and_per_expert(fmt, tile, mixtral_path, monkeypatch):
    """With the tile kernels chosen for every token count, the layer call runs them and gives
    the per-expert path's logits, and both stay within the exactness tolerance of the default
    native kernels (fp32 panels: exact weights; bf16 panels: the weights a bf16 reference
    holds, so bf16 tolerance)."""
    import fiddler_nb as fnb
    from fiddler_nb.runtime.engine import experts as experts_mod
    from fiddler_nb.runtime.kernels.registry import (NATIVE_AMX_TILE_KERNELS,
                                                     NATIVE_BF16_TILE_KERNELS,
                                                     NATIVE_TILE_KERNELS, TOKEN_BUCKETS,
                                                     KernelChoice)

    dtype = "bfloat16" if fmt in ("bf16", "int8-g32", "int4") else None
    engine = fnb.load(mixtral_path, device="cpu", expert_dtype=fmt, execution="cpu",
                      expert_budget=0, dtype=dtype)
    inputs = engine.encode(["The quick brown fox jumps over the lazy dog", "Hello"])
    with torch.inference_mode():
        default_logits = engine.model(**inputs).logits
    store = engine._state.store
    label, matrix_fmt = store.storage.fmt.label(), store.storage.fmt.matrix_fmt
    kernels = {"native-tile": NATIVE_TILE_KERNELS, "native-bf16tile": NATIVE_BF16_TILE_KERNELS,
               "native-amxtile": NATIVE_AMX_TILE_KERNELS}[tile]
    name = kernels[matrix_fmt]
    if not get_kernel(name).available():
        pytest.skip(f"{name} does not run on this CPU")
    engine.set_kernels(KernelChoice({label: {b: name for b in TOKEN_BUCKETS}}, source="test"))
    calls = []
    real = experts_mod.run_layer
    monkeypatch.setattr(experts_mod, "run_layer",
                        lambda *a, **k: calls.append(k.get("tile")) or real(*a, **k))
    with torch.inference_mode():
        layer_logits = engine.model(**inputs).logits
    assert len(calls) == engine.num_layers and all(calls)  # every layer, tiled
    monkeypatch.setattr(store, "layer_call_blocker", "test: per-expert path")
    with torch.inference_mode():
        expert_logits = engine.model(**inputs).logits
    assert len(calls) == engine.num_layers
    bf16 = layer_logits.dtype == torch.bfloat16
    tol = 2e-2 if bf16 else 1e-5
    assert (layer_logits.float() - expert_logits.float()).abs().max().item() <= tol
    assert (layer_logits.float() - default_logits.float()).abs().max().item() <= tol


def test_architectures_the_layer_call_cannot_run_say_so_once(tiny_checkpoints):
    import fiddler_nb as fnb

    engine = fnb.load(tiny_checkpoints["gpt_oss"], device="cpu", execution="cpu")
    notes = [n for n in engine.notes if "one call per layer" in n]
    assert len(notes) == 1 and "gate" in notes[0] and "biases" in notes[0]
    engine = fnb.load(tiny_checkpoints["mixtral"], device="cpu", execution="cpu")
    assert not any("one call per layer" in n for n in engine.notes)


def test_kernel_choice_is_measured_once_per_machine_and_cached(monkeypatch, tmp_path,
                                                              mixtral_path):
    import fiddler_nb as fnb
    from fiddler_nb.measure import kernel_cache, kernel_choice

    monkeypatch.setenv("FIDDLER_NB_CACHE", str(tmp_path))
    monkeypatch.delenv("FIDDLER_NB_KERNEL_CHOICE")
    monkeypatch.setattr(kernel_cache, "MEASURE_SHAPE", (64, 64))  # seconds -> milliseconds
    monkeypatch.setattr(kernel_cache, "ROTATE_BYTES", 1 << 16)
    runs = []
    real = kernel_choice.measure_kernels
    monkeypatch.setattr(kernel_cache, "measure_kernels",
                        lambda *a, **k: runs.append(a) or real(*a, **k))
    engine = fnb.load(mixtral_path, device="cpu", expert_dtype="int8")
    assert len(runs) == 1 and "measured once" in engine._state.store.kernels.source
    cached = list((tmp_path / "kernel-choice").glob("int8-*.json"))
    assert len(cached) == 1
    table = engine._state.store.kernels.table["int8"]
    assert set(table) == {1, 8, 64, 512}  # 512: the 64-token bucket's fastest GEMM kernel
    assert table[512] in GEMM_KERNELS
    fnb.load(mixtral_path, device="cpu", expert_dtype="int8")  # read back, not measured
    assert len(runs) == 1
    monkeypatch.setenv("FIDDLER_NB_KERNEL_CHOICE", "default")
    engine = fnb.load(mixtral_path, device="cpu", expert_dtype="int8")
    assert "default" in engine._state.store.kernels.source and len(runs) == 1


def test_dense_linears_run_through_the_kernels_and_compress(mixtral_path, stock_model):
    """A CPU-only engine routes attention and lm_head through the same kernels (same logits as
    stock within the exactness tolerance); dense_dtype compresses them; a GPU refuses it."""
    import fiddler_nb as fnb
    from fiddler_nb.runtime.errors import FormatError
    from torch import nn

    engine = fnb.load(mixtral_path, device="cpu", execution="cpu")
    routed = [m for m in engine.model.modules() if "_fnb_dense" in m.__dict__]
    assert routed and all(type(m) is nn.Linear for m in routed)
    inputs = engine.encode(["The quick brown fox"])
    with torch.inference_mode():
        got = engine.model(**inputs).logits
        want = stock_model(mixtral_path)(**inputs).logits
    assert (got - want).abs().max().item() <= 1e-5
    for dense in ("bf16", "int8", "int4"):
        small = fnb.load(mixtral_path, device="cpu", execution="cpu", dense_dtype=dense)
        with torch.inference_mode():
            logits = small.model(**inputs).logits
        assert torch.isfinite(logits).all()
        err = (logits - want).abs().max().item()
        assert 1e-6 < err < 0.5 * want.abs().max().item(), f"{dense}: {err}"  # changed, sane
    with pytest.raises(FormatError, match="unknown dense_dtype"):
        fnb.load(mixtral_path, device="cpu", dense_dtype="int3")
    from fiddler_nb.runtime.engine.dense import check_dense_dtype

    with pytest.raises(FormatError, match="live on the GPU"):
        check_dense_dtype("int8", torch.device("cuda"))


# ---- kernels that quantize activations (opt-in) ---------------------------------------------
# Tolerance: each block's integer products are summed exactly in int32, so a variant differs
# from the double-precision reference only by the fp32 scaling and summing of K / 32 block sums:
# REL (1e-5 of sum |xq w|) as above. Against the exact product, the one extra error is the
# rounding of x: |x - q d| <= d / 2 per input, so |got - exact| <= sum_b d_b / 2 sum_k |w_k|.
Q8_FORMATS = [quant.ExpertFormat("int8"), quant.ExpertFormat("int8", 32),
              quant.ExpertFormat("int8", 64), quant.ExpertFormat("int4", 32, int4_layout="nibbles"),
              quant.ExpertFormat("int4", 128, int4_layout="nibbles")]


def _q8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' activation rounding, written independently: per 32 inputs d = max|x| / 127
    (fp32), q = round-half-even(x * 127 / max|x|) -> (q * d [n, K] in double, d [n, K/32])."""
    xb = x.float().view(x.shape[0], -1, 32)
    amax = xb.abs().amax(-1, keepdim=True)
    # IEEE fp32 quotient and product, as C computes them: each in double (exact product, and a
    # quotient rounded twice, which is innocuous from 53 to 24 bits), then rounded to fp32.
    # torch's own `127.0 / amax` may multiply by a reciprocal, one ulp off: 75.49999 instead of
    # 75.5 then rounds the other way (seen at seed 242).
    inv = torch.where(amax > 0, (127.0 / amax.double()).float(), torch.zeros_like(amax))
    prod = (xb.double() * inv.double()).float()
    q = torch.round(prod).clamp(-127, 127)  # torch.round: half to even, like nearbyintf
    d = (amax.double() / 127.0).float()
    return (q.double() * d.double()).view_as(x), d.squeeze(-1)


@pytest.mark.parametrize("fmt", Q8_FORMATS, ids=lambda f: f.label())
@pytest.mark.parametrize("wide", [False, True], ids=["K<8192", "K>=8192"])
def test_activation_quant_kernels_match_their_reference_and_bound(fmt, wide):
    """Both tilings: one row per tile, and (K >= 8192, one or two tokens) rows sharing each
    activation load; 13 rows leave a remainder after the 4-row tiles."""
    if wide:  # 257 blocks (an odd last one) where the group allows it
        n_out, k_in, token_counts = 13, 8224 if (fmt.group_size or 32) == 32 else 8320, (1, 2, 3)
    else:  # 9 blocks: an odd last one
        n_out, k_in, token_counts = 37, 288 if (fmt.group_size or 32) == 32 else 256, TOKENS
    m = _matrix(fmt, n_out, k_in, torch.float32)
    w = dequantize_matrix(m, torch.float32).double()  # [N, K]
    for tokens in token_counts:
        x = torch.randn(tokens, k_in) * torch.logspace(-1, 1, k_in)  # [n, K] uneven blocks
        xq, d = _q8(x)
        ref = native.native_linear(x, m, "ref", quantize_activations=True)
        _check(ref, xq.float(), m, f"ref q8 {fmt.label()} T={tokens}")  # its own math
        for isa in _variants():
            got = native.native_linear(x, m, isa, quantize_activations=True)
            _check(got, xq.float(), m, f"{isa} q8 {fmt.label()} T={tokens}")
        exact = x.double() @ w.t()  # [n, N]
        half_step = (d.double() / 2).repeat_interleave(32, dim=1)  # [n, K]
        bound = half_step @ w.abs().t() + (x.double().abs() @ w.abs().t()) * REL
        assert ((ref.double() - exact).abs() <= bound).all()
        assert (ref.double() - exact).abs().max() > 0  # it does round: not the exact kernel


def test_activation_quant_runs_only_where_allowed():
    from fiddler_nb.runtime.kernels.registry import KernelChoice, candidates

    assert "native-q8-int8g" not in candidates("int8-group")
    assert "native-q8-int8g" in candidates("int8-group", activation_quant=True)
    asks = KernelChoice({"int8-g32": {1: "native-q8-int8g"}}, table_q8={})
    assert asks.kernel_name("int8-g32", "int8-group", 1, torch.float32) == "native-int8g"
    allowed = asks.allowing_activation_quant(True)
    assert allowed.kernel_name("int8-g32", "int8-group", 1, torch.float32) == "native-q8-int8g"
    assert DEFAULT_CHOICE.allowing_activation_quant(True).kernel_name(
        "int4-g32", "int4-blocks", 8, torch.float32) == "native-q8-int4"
    assert DEFAULT_CHOICE.allowing_activation_quant(True).kernel_name(
        "bf16", "float", 1, torch.bfloat16) == "native-float"  # floats have none: exact
    m = _matrix(quant.ExpertFormat("int8"), 8, 48, torch.float32)  # K % 32 != 0: exact
    x = torch.randn(2, 48)
    assert torch.equal(native.native_linear(x, m, quantize_activations=True),
                       native.native_linear(x, m))


@pytest.mark.parametrize("fmt", ["int8", "int8-g32", "int4"])
def test_engine_with_activation_quant(fmt, mixtral_path, monkeypatch):
    """allow_activation_quant: the layer call quantizes (same outputs as the per-expert q8 path),
    the engine says so once, logits stay near the exact engine's; bad values are refused."""
    import fiddler_nb as fnb
    from fiddler_nb.runtime.engine import experts as experts_mod
    from fiddler_nb.runtime.errors import OptionError

    group = 32 if fmt == "int8-g32" else None
    name = fmt.split("-")[0]
    exact = fnb.load(mixtral_path, device="cpu", expert_dtype=name, group_size=group,
                     execution="cpu", expert_budget=0)
    engine = fnb.load(mixtral_path, device="cpu", expert_dtype=name, group_size=group,
                      execution="cpu", expert_budget=0, allow_activation_quant=True)
    assert engine.activation_quant and not exact.activation_quant
    assert sum("activation quantization allowed" in n and "not exact" in n
               for n in engine.notes) == 1
    calls = []
    real = experts_mod.run_layer
    monkeypatch.setattr(experts_mod, "run_layer",
                        lambda *a, **k: calls.append(k.get("quantize_activations")) or
                        real(*a, **k))
    inputs = engine.encode(["The quick brown fox", "Hello"])
    with torch.inference_mode():
        q8_logits = engine.model(**inputs).logits
        want = exact.model(**inputs).logits
    assert calls and all(calls[: engine.num_layers]) and not any(calls[engine.num_layers:])
    monkeypatch.setattr(engine._state.store, "layer_call_blocker", "test: per-expert path")
    with torch.inference_mode():
        per_expert = engine.model(**inputs).logits
    assert (q8_logits - per_expert).abs().max().item() <= 1e-5  # same roundings, fp32
    err = (q8_logits - want).abs().max().item()
    # 8-bit activations: ~0.4% relative error per matrix; 2 layers of experts plus the dense
    # layers (exact here) stay far inside 5% of the logits' range, and are not 0
    assert 0 < err < 0.05 * want.abs().max().item()
    with pytest.raises(OptionError, match="allow_activation_quant"):
        fnb.load(mixtral_path, device="cpu", allow_activation_quant="yes")


def test_amx_tiles_switch_off_and_fall_back(monkeypatch):
    """FIDDLER_NB_AMX=0: the AMX kernels are no candidates, and a call asking for them runs the
    fp32 tiles (the exact weights), as on a CPU without AMX."""
    from fiddler_nb.runtime.kernels.registry import NATIVE_AMX_TILE_KERNELS, candidates

    monkeypatch.setenv("FIDDLER_NB_AMX", "0")
    assert not native.amx_available()
    assert NATIVE_AMX_TILE_KERNELS["int8-group"] not in candidates("int8-group")
    m = _matrix(quant.ExpertFormat("int8", 32), 64, 256, torch.bfloat16)
    x = torch.randn(20, 256).to(torch.bfloat16)
    got = native.native_linear(x, m, tile=native.TILE_AMX)
    _check(got, x, m, "int8-g32 asked for AMX tiles with AMX off")
