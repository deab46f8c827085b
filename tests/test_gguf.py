"""GGUF files loaded as they are: every supported architecture x expert type against stock
transformers on a checkpoint whose tensors are the file's own values dequantized by the `gguf`
package (`fnb.write_gguf_reference`), for every execution policy and budget.

Tolerance. For kept types (Q4_0, Q4_1, Q4_K, Q8_0, MXFP4, F16, BF16) the engine multiplies by
exactly the file's numbers in float32: Q4_0's fp16 scale, Q8_0's q * d and every e2m1 value times
a power of two are exact in fp32, and Q4_1 / Q4_K's zero point 8 d sc - dmin m costs one fp32
rounding (2^-24 relative). What differs from stock is then the kernels' fp32 accumulation order
(torch's int4 kernel sums per group and applies scale and zero after; stock sums x_k w_k with
oneDNN's blocking): a few ulps of sum_k |x_k w_k| per output, K <= 256 here, so <= 256 x 2^-24
~ 1.5e-5 relative at worst and ~1e-7 typically; carried through four layers to logits of
magnitude ~1, we measured at most 5.1e-7 (Q4_K, 2026-12-01). LOGIT_ATOL = 1e-5 (the int8 / int4
exactness tests' tolerance) leaves ~20x margin and is far below what one wrong scale, nibble
order or zero point does (checked below). Converted types (Q5_K, Q6_K) are compared with the
reference's experts passed through the same conversion (int8 group 32), at the same tolerance,
and their conversion error is stated in eng.notes. Greedy tokens must be identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import fiddler_nb as fnb
from fiddler_nb.runtime.engine.dequantized import dequantize_experts_in_place
from fiddler_nb.runtime.engine.gguf_load import CONVERT_TO

from test_exactness import (PROMPTS, _tokens_and_logits, split_latency, sweep_against,
                            sweep_differences)

LOGIT_ATOL = 1e-5
EXECUTIONS = ("cpu", "transfer", "auto")
KEPT = {"Q4_0": "gguf-q4_0", "Q4_1": "gguf-q4_1", "Q4_K": "gguf-q4_k", "Q8_0": "gguf-q8_0",
        "MXFP4": "gguf-mxfp4", "F16": "fp32", "BF16": "fp32"}
CONVERTED = ("Q5_K", "Q6_K")
CASES = [("mixtral", t) for t in (*KEPT, *CONVERTED)] + [
    ("qwen2_moe", "Q4_0"), ("qwen2_moe", "Q8_0"), ("qwen3_moe", "Q4_K"), ("qwen3_moe", "MXFP4"),
    ("gpt_oss", "MXFP4"), ("gpt_oss", "Q8_0"), ("gpt_oss", "Q4_0")]



@pytest.fixture(scope="session")
def gguf_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    cache: dict[tuple[str, str], tuple[str, str]] = {}

    def get(arch: str, gguf_type: str) -> tuple[str, str]:
        """(file, reference checkpoint) of a tiny `arch` model with `gguf_type` experts."""
        if (arch, gguf_type) not in cache:
            path = fnb.make_tiny_gguf(root / f"{arch}-{gguf_type}.gguf", arch, gguf_type)
            ref = fnb.write_gguf_reference(path, root / f"ref-{arch}-{gguf_type}")
            cache[arch, gguf_type] = (str(path), str(ref))
        return cache[arch, gguf_type]
    return get


@pytest.mark.parametrize("arch,gguf_type", CASES)
def test_gguf_engine_matches_stock_on_the_files_values(arch, gguf_type, gguf_files, stock_model):
    path, ref_path = gguf_files(arch, gguf_type)
    ref = stock_model(ref_path)
    engine = fnb.load(path, device="cpu", expert_budget=0, placement="none", execution="cpu")
    if gguf_type in CONVERTED:
        assert engine.expert_dtype == CONVERT_TO.label()
        assert any("converted" in n for n in engine.notes)
        assert any("relative RMS" in n for n in engine.notes)
        dequantize_experts_in_place(ref, CONVERT_TO)  # what the engine multiplies by
    else:
        assert engine.expert_dtype == KEPT[gguf_type]
    assert engine.config.dtype == "float32"
    failures = sweep_against(engine, ref, EXECUTIONS, LOGIT_ATOL)
    assert not failures, f"{arch} {gguf_type}: " + "; ".join(failures)


def test_dense_weights_are_the_original_models(tmp_path):
    """Independent of our loader's name map: an F32 file written from a transformers model
    gives back that model's non-expert weights (llama's Q/K permutation undone) and, for F32
    experts, its experts."""
    from transformers import AutoModelForCausalLM

    from fiddler_nb.runtime.model.tiny import _scale_routers, tiny_config

    path = fnb.make_tiny_gguf(tmp_path / "m.gguf", "mixtral", "F32", seed=5)
    torch.manual_seed(5)
    original = AutoModelForCausalLM.from_config(tiny_config("mixtral"), dtype=torch.float32)
    _scale_routers(original, 5)
    engine = fnb.load(path, device="cpu", execution="cpu")
    mine = dict(engine.model.named_parameters())
    for name, param in original.named_parameters():
        assert torch.equal(mine[name], param), name
    engine.close()


def test_quantization_changes_logits_far_more_than_tolerance(gguf_files, stock_model, tmp_path):
    """The tolerance means something: the same model with F32 experts differs by >> it."""
    path, _ = gguf_files("mixtral", "Q4_0")
    f32 = fnb.make_tiny_gguf(tmp_path / "f32.gguf", "mixtral", "F32")
    q4, full = (fnb.load(p, device="cpu", execution="cpu") for p in (path, f32))
    inputs = q4.encode(PROMPTS)
    diff = (_tokens_and_logits(q4.model, inputs)[1] - _tokens_and_logits(full.model, inputs)[1])
    assert diff.abs().max().item() > 10 * LOGIT_ATOL


def test_bf16_activations_say_what_they_round(gguf_files):
    path, _ = gguf_files("mixtral", "Q4_1")  # zero points: torch's int4 pack, scales in bf16
    engine = fnb.load(path, device="cpu", dtype="bfloat16", execution="cpu")
    assert engine.expert_dtype == "gguf-q4_1"
    assert any("rounded to bf16" in n for n in engine.notes)
    assert engine.generate("Hello", max_new_tokens=3).token_ids.shape[1] == 3


def test_q4_0_runs_in_the_native_nibble_layout_with_the_files_scales(gguf_files):
    """Q4_0 has no zero points: with the native kernels its experts are the file's nibbles and
    fp16 scales (nothing rounded in bf16), and its Q8_0 / Q4_0 dense weights stay in blocks."""
    from fiddler_nb.runtime.kernels import native

    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.unavailable_reason()}")
    path, _ = gguf_files("mixtral", "Q4_0")
    engine = fnb.load(path, device="cpu", dtype="bfloat16", execution="cpu")
    store = engine._state.store
    assert store.storage.fmt.matrix_fmt == "int4-blocks"
    layer = store.layers[0].module
    scale = getattr(layer, store.storage.cpu_names()[1])
    assert scale.dtype == torch.float16
    assert not any("rounded to" in n for n in engine.notes)
    assert engine.generate("Hello", max_new_tokens=3).token_ids.shape[1] == 3


def test_expert_dtype_converts_the_files_values(gguf_files):
    path, _ = gguf_files("mixtral", "Q8_0")
    engine = fnb.load(path, device="cpu", expert_dtype="int4", group_size=32, execution="cpu")
    assert engine.expert_dtype == "int4-g32"
    assert any("as asked" in n for n in engine.notes)


def test_memory_and_bytes_in_the_files_format(gguf_files):
    path, _ = gguf_files("mixtral", "Q4_0")
    engine = fnb.load(path, device="cpu", execution="cpu")
    report = engine.memory()
    assert report.expert_format == "gguf-q4_0"
    assert set(report.host_expert_bytes) == {"gguf-q4_0"}
    hidden, inter = 64, 128  # tiny mixtral: gate+up [2I, H] and down [H, I]
    weights = 3 * hidden * inter
    from fiddler_nb.runtime.kernels import native

    if native.available():  # the file's own bytes: 16 of nibbles + an fp16 scale per 32
        assert engine.expert_bytes == weights // 32 * 18
    else:  # torch's int4 pack with (scale, zero) in fp32
        assert engine.expert_bytes == weights // 2 + weights // 32 * 2 * 4
    assert "gguf-q4_0" in repr(engine)


def test_split_files_and_folders_load(tmp_path):
    first = fnb.make_tiny_gguf(tmp_path / "split" / "m.gguf", "mixtral", "Q4_0",
                               split_max_tensors=20)
    assert first.name == "m-00001-of-00003.gguf"
    whole = fnb.make_tiny_gguf(tmp_path / "whole" / "m.gguf", "mixtral", "Q4_0")
    engines = [fnb.load(p, device="cpu", execution="cpu") for p in (first, first.parent, whole)]
    inputs = engines[0].encode(PROMPTS)
    logits = [_tokens_and_logits(e.model, inputs)[1] for e in engines]
    assert torch.equal(logits[0], logits[2]) and torch.equal(logits[1], logits[2])


def test_tokenizer_comes_from_the_metadata(gguf_files):
    from fiddler_nb.runtime.model.tiny import build_tokenizer

    path, _ = gguf_files("mixtral", "Q4_0")
    engine = fnb.load(path, device="cpu", execution="cpu")
    text = "Hello wörld </s>"
    assert engine.tokenizer(text)["input_ids"] == build_tokenizer()(text)["input_ids"]
    assert engine.tokenizer.chat_template is not None
    assert engine.tokenizer.padding_side == "left"


# ---- refused, with one line, before any weight is placed ------------------------------------
def _write(path, arch="llama", tensors=(), **meta):
    """A small hand-made GGUF: `tensors` = (name, array, raw_dtype or None)."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    for key, value in meta.items():
        writer.add_uint32(key.replace("__", "."), value)
    for name, array, raw in tensors:
        writer.add_tensor(name, array, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _retyped(src, dst, tensor: str, new_type: str) -> None:
    """A copy of the GGUF `src` whose tensor `tensor` claims type `new_type` (same bytes)."""
    from gguf import GGMLQuantizationType

    data = bytearray(src.read_bytes())
    name = tensor.encode()  # tensor info: name (u64 length + bytes), n_dims, dims, type, offset
    at = bytes(data).index(len(name).to_bytes(8, "little") + name) + 8 + len(name)
    n_dims = int.from_bytes(data[at:at + 4], "little")
    offset = at + 4 + 8 * n_dims
    data[offset:offset + 4] = int(GGMLQuantizationType[new_type]).to_bytes(4, "little")
    dst.write_bytes(bytes(data))


def test_unknown_tensor_type_names_tensor_type_and_supported(gguf_files, tmp_path):
    path, _ = gguf_files("mixtral", "Q4_0")
    bad = tmp_path / "iq.gguf"
    _retyped(Path(path), bad, "blk.1.ffn_up_exps.weight", "IQ4_NL")  # same 18-byte blocks of 32
    with pytest.raises(fnb.FormatError) as info:
        fnb.load(bad, device="cpu")
    text = str(info.value)
    assert "blk.1.ffn_up_exps.weight" in text and "IQ4_NL" in text and "Q4_K" in text
    assert "\n" not in text


def test_dense_llama_and_unknown_architectures_are_refused(tmp_path):
    dense = _write(tmp_path / "dense.gguf", "llama", [("token_embd.weight",
                                                        np.zeros((4, 8), np.float32), None)],
                   llama__block_count=1)
    with pytest.raises(fnb.UnsupportedModelError, match="dense llama"):
        fnb.load(dense, device="cpu")
    other = _write(tmp_path / "g.gguf", "gemma2", [("token_embd.weight",
                                                     np.zeros((4, 8), np.float32), None)])
    with pytest.raises(fnb.UnsupportedModelError, match="gemma2.*llama, qwen2moe, qwen3moe"):
        fnb.load(other, device="cpu")


def test_truncated_files_and_missing_parts_are_one_line(gguf_files, tmp_path):
    path, _ = gguf_files("mixtral", "Q4_0")
    data = open(path, "rb").read()
    for cut in (10, 200, len(data) // 2, len(data) - 7):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(fnb.CheckpointError) as info:
            fnb.load(bad, device="cpu")
        assert "\n" not in str(info.value) and str(bad) in str(info.value)
    first = fnb.make_tiny_gguf(tmp_path / "split" / "m.gguf", "mixtral", "Q4_0",
                               split_max_tensors=20)
    (first.parent / "m-00002-of-00003.gguf").unlink()
    with pytest.raises(fnb.CheckpointError, match="missing part.*m-00002-of-00003"):
        fnb.load(first, device="cpu")
    with pytest.raises(fnb.CheckpointError, match="part 3 of a split"):
        fnb.load(first.parent / "m-00003-of-00003.gguf", device="cpu")


def test_folder_with_two_models_is_refused(tmp_path):
    for name in ("a.gguf", "b.gguf"):
        fnb.make_tiny_gguf(tmp_path / name, "mixtral", "Q4_0")
    with pytest.raises(fnb.CheckpointError, match="holds 2 GGUF models"):
        fnb.load(tmp_path, device="cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("gguf_type", ["Q4_K", "Q8_0", "MXFP4"])
def test_cuda_gguf_experts_decoded_on_the_gpu_match(gguf_type, gguf_files, stock_model):
    """On a GPU: resident rows and scratch slots hold the file's blocks (int4: the nibble copy
    with scale and zero), decoded on the GPU before its GEMM; the CPU runs the packed kernels.
    GPU GEMMs differ from oneDNN's order, hence 1e-4 (as for int8 / int4)."""
    path, ref_path = gguf_files("mixtral", gguf_type)
    ref = stock_model(ref_path).to("cuda")
    engine = fnb.load(path, device="cuda", dtype="float32", expert_budget=0, placement="none",
                      execution="cpu")
    engine.set_latency_model(split_latency(engine.expert_bytes))
    inputs = engine.encode(PROMPTS)
    want_tokens, want_logits = _tokens_and_logits(ref, inputs)
    failures = sweep_differences(engine, inputs, want_tokens, want_logits, EXECUTIONS, 1e-4)
    assert not failures, "; ".join(failures)


def test_loading_holds_the_model_once(tmp_path):
    """Experts are read from the memory-mapped file one expert at a time: the anonymous memory
    loading adds (peak, sampled every millisecond in a fresh process) is the model's own tensors
    plus one expert's conversion buffers, never a float copy of the experts (which would be
    100 MB here: 25M expert weights in fp32; the Q4_0 file holds 14 MB of them)."""
    from test_streaming_load import _load_peak

    path = fnb.make_tiny_gguf(tmp_path / "m.gguf", "mixtral", "Q4_0", hidden_size=256,
                              intermediate_size=1024)
    engine = fnb.load(path, device="cpu")
    tensors = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    engine.close()
    added = _load_peak(path, None)["added_kib"] * 1024
    # one expert's buffers (nibbles, q, torch's int32 pack input, scales) are ~4 int32 copies of
    # one expert: measured peak 31 MB for 22.6 MB of tensors (2026-12-01)
    one_expert = 3 * 256 * 1024 * 4
    assert added <= 1.1 * tensors + 4 * one_expert, (added, tensors)


@pytest.mark.parametrize("arch,dense,experts", [
    ("mixtral", "Q8_0", "Q4_0"), ("mixtral", "Q4_0", "Q8_0"), ("qwen2_moe", "Q8_0", "Q8_0"),
    ("qwen3_moe", "Q4_0", "Q4_K"), ("gpt_oss", "Q8_0", "MXFP4")])
def test_dense_weights_stay_in_the_files_blocks(arch, dense, experts, tmp_path, stock_model):
    """A CPU-only engine keeps Q8_0 / Q4_0 linears and embeddings as the file has them (rows
    permuted like llama's Q / K heads where transformers permutes them): same tokens and logits
    as stock on the file's values, the note says so, and their bytes are the file's."""
    from fiddler_nb.runtime.kernels import native

    if dense == "Q4_0" and not native.available():
        pytest.skip("Q4_0 dense blocks need the native kernels")
    path = fnb.make_tiny_gguf(tmp_path / "m.gguf", arch, experts, dense_type=dense)
    ref = stock_model(str(fnb.write_gguf_reference(path, tmp_path / "ref")))
    engine = fnb.load(path, device="cpu", expert_budget=0, placement="none", execution="cpu")
    assert any(f"kept in the file's blocks" in n and dense in n for n in engine.notes)
    kept = [m for m in engine.model.modules()
            if "_fnb_dense" in m.__dict__ and m._fnb_dense[0].fmt != "float"]
    assert kept and all(m.weight.numel() == 0 for m in kept)  # no float copy held
    failures = sweep_against(engine, ref, ("cpu",), LOGIT_ATOL)
    assert not failures, f"{arch} dense {dense}: " + "; ".join(failures)
    assert engine.vocab_size == ref.config.vocab_size  # from the kept table's rows
    assert engine.generate("Hello", max_new_tokens=2).token_ids.shape[1] == 2
    floats = sum(p.numel() * 4 for n, p in ref.named_parameters() if "experts" not in n)
    assert engine.memory().non_expert_bytes < 0.5 * floats  # blocks, not float32


def test_other_quantized_dense_types_are_converted_with_their_error(tmp_path, stock_model):
    path = fnb.make_tiny_gguf(tmp_path / "m.gguf", "mixtral", "Q8_0", dense_type="Q6_K")
    engine = fnb.load(path, device="cpu", execution="cpu")
    note = next(n for n in engine.notes if "non-expert weights converted to int8-g32" in n)
    assert "Q6_K" in note and "relative RMS error" in note
    ref = stock_model(str(fnb.write_gguf_reference(path, tmp_path / "ref")))
    inputs = engine.encode(PROMPTS)
    got, want = (_tokens_and_logits(m, inputs)[1] for m in (engine.model, ref))
    err = (got - want).abs().max().item()
    assert 0 < err < 0.05 * want.abs().max().item()  # 8-bit requantization of 6-bit values
