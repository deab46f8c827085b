"""Pick the CPU kernel per expert format and token bucket, and the thread count, by measurement.

For each format (bf16 / fp16 / fp32 / int8 / int4-gG) one expert's gate_up matrix [2I, H] is
stored as the engine stores it (runtime/formats/storage.py), rotated over enough copies to be read from
DRAM, and every kernel the registry offers for it (runtime/kernels/registry.py `candidates`) is timed at
each token bucket; the fastest wins (the kernels that quantize activations are timed too, and
win only in `choice_q8`, which an engine uses where its caller allows them); buckets past the
largest timed one take its fastest GEMM-class kernel. Threads: the chosen one-token kernel of the first format is
timed at 1..nproc threads (a busy neighbour core can make fewer threads faster) and the best
count is kept. Every figure is stored with torch's CPU capability (AVX2 / AVX512 / AMX ...).

Shape legend: n = tokens, N = 2I output channels, K = H input channels, C = rotated copies.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from ..runtime.kernels.native import cpu_layout
from ..runtime.kernels.registry import (GEMM_KERNELS, TOKEN_BUCKETS, KernelChoice, Matrix,
                                        candidates, get_kernel, quantizes_activations)
from ..runtime.formats.quant import ExpertFormat
from ..runtime.formats.storage import SCALE_SUFFIX, convert_weight, tensor_bytes
from .probes import _median_ms

QUICK_BUCKETS = (1, 8, 64)  # quick mode: decode, small batches, a short prefill
ROTATE_BYTES = 256 << 20  # weights read per rotation: well past a 32-128 MiB LLC


@dataclass(frozen=True)
class KernelMeasurement:
    """What was measured: ms per (format, bucket, kernel), threads, and the choice."""

    cpu_capability: str  # torch.backends.cpu.get_cpu_capability(): AVX2 / AVX512 / ...
    shape: tuple[int, int]  # (N, K) of the timed matrix
    ms: dict[str, dict[str, dict[str, float]]]  # format -> bucket -> kernel -> median ms
    bytes_read: dict[str, int]  # format -> bytes of the matrix as stored (weights + scales)
    thread_ms: dict[str, float] = field(default_factory=dict)  # threads -> one-token ms
    threads: int | None = None
    choice: dict[str, dict[str, str]] = field(default_factory=dict)  # format -> bucket -> kernel
    # the same with the kernels that quantize activations among the candidates (used only
    # where the engine allows them)
    choice_q8: dict[str, dict[str, str]] = field(default_factory=dict)

    def kernel_choice(self) -> KernelChoice:
        table = {f: {int(b): k for b, k in per.items()} for f, per in self.choice.items()}
        table_q8 = {f: {int(b): k for b, k in per.items()} for f, per in self.choice_q8.items()}
        return KernelChoice(table, self.threads,
                            f"measured ({self.cpu_capability}, {self.shape[0]}x{self.shape[1]})",
                            table_q8)

    def gbps(self, fmt: str, bucket: int = 1, activation_quant: bool = False) -> float:
        """Bytes of the format read per second by the chosen kernel at `bucket` tokens (the
        choice with activation-quantizing kernels allowed, with activation_quant)."""
        choice = self.choice_q8 if activation_quant and self.choice_q8 else self.choice
        ms = self.ms[fmt][str(bucket)][choice[fmt][str(bucket)]]
        return self.bytes_read[fmt] / ms / 1e6

    def to_dict(self) -> dict:
        """JSON-ready (lists, string keys), so a saved profile reads back equal."""
        return dict(asdict(self), shape=list(self.shape))

    @classmethod
    def from_dict(cls, data: dict) -> "KernelMeasurement":
        data = dict(data, shape=tuple(data["shape"]))
        return cls(**data)


def _stored(fmt: ExpertFormat, w: torch.Tensor, act: torch.dtype) -> Matrix:
    """One matrix w [N, K] as the engine stores it for the CPU kernels."""
    parts = convert_weight(w[None], fmt, False, act, on_gpu=False)
    return Matrix(fmt.matrix_fmt, parts[""][0], parts.get(SCALE_SUFFIX, [None])[0], fmt.group_size)


def measure_kernels(hidden: int, inter: int, formats: Sequence[ExpertFormat],
                    act: torch.dtype = torch.bfloat16, buckets: Sequence[int] = QUICK_BUCKETS,
                    threads: Sequence[int] | None = None, warmup: int = 1, repeats: int = 3,
                    rotate_bytes: int = ROTATE_BYTES, progress: bool = False) -> KernelMeasurement:
    """Time every candidate kernel of each format at each bucket; pick the fastest; then time
    threads 1..nproc (None: every count up to os.cpu_count()) with the first format's choice.
    progress: a tqdm bar over (format, bucket)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(formats) * len(buckets), desc="CPU kernels", disable=not progress)
    n_out, k_in = 2 * inter, hidden  # the gate_up matrix: the larger of an expert's two
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(n_out, k_in, generator=gen) * k_in ** -0.5  # [N, K] fp32
    ms: dict[str, dict[str, dict[str, float]]] = {}
    choice: dict[str, dict[str, str]] = {}
    choice_q8: dict[str, dict[str, str]] = {}
    nbytes: dict[str, int] = {}
    mats: dict[str, list[Matrix]] = {}
    with torch.inference_mode():
        for fmt in map(cpu_layout, formats):  # the layout the engine stores here
            label = fmt.label()
            first = _stored(fmt, base, act)
            nbytes[label] = tensor_bytes(first.data) + (tensor_bytes(first.scale)
                                                        if first.scale is not None else 0)
            copies = max(1, math.ceil(rotate_bytes / nbytes[label]))  # C
            mats[label] = [first] + [_stored(fmt, base.roll(c, 0), act) for c in range(1, copies)]
            ms[label], choice[label], choice_q8[label] = {}, {}, {}
            x_dtype = fmt.float_dtype or act  # float experts run in their own dtype
            for bucket in buckets:
                x = torch.randn(bucket, k_in, generator=gen).to(x_dtype)  # [n, K]
                timing = {name: _time(name, x, mats[label], warmup, repeats)
                          for name in candidates(first.fmt, activation_quant=True)}
                ms[label][str(bucket)] = timing
                exact = {k: v for k, v in timing.items() if not quantizes_activations(k)}
                choice[label][str(bucket)] = min(exact, key=exact.get)
                choice_q8[label][str(bucket)] = min(timing, key=timing.get)
                bar.update(1)
            _extend_to_larger_buckets(ms[label], choice[label], choice_q8[label])
        bar.close()
        thread_ms, best = _measure_threads(formats, mats, choice, act, k_in, threads, warmup,
                                           repeats)
    return KernelMeasurement(torch.backends.cpu.get_cpu_capability(), (n_out, k_in), ms, nbytes,
                             thread_ms, best, choice, choice_q8)


def _extend_to_larger_buckets(ms: dict[str, dict[str, float]], choice: dict[str, str],
                              choice_q8: dict[str, str]) -> None:
    """Buckets past the largest measured one (prefill's hundreds of tokens: too slow to time
    in a quick measurement) take the fastest GEMM-class kernel of the largest measured bucket:
    those are compute-bound from tens of tokens on, so their order holds; the per-row kernels,
    fast for a few tokens, are not extrapolated."""
    if not ms:
        return
    top = max(ms, key=int)
    gemm = {k: v for k, v in ms[top].items() if k in GEMM_KERNELS}
    if not gemm:
        return
    best = min(gemm, key=gemm.get)
    for bucket in TOKEN_BUCKETS:
        if bucket > int(top):
            choice[str(bucket)] = choice_q8[str(bucket)] = best


def _time(name: str, x: torch.Tensor, mats: list[Matrix], warmup: int, repeats: int) -> float:
    fn = get_kernel(name).fn
    turn = iter(range(1 << 62))
    return _median_ms(lambda: fn(x, mats[next(turn) % len(mats)]), warmup, repeats)


def _measure_threads(formats, mats, choice, act, k_in, threads, warmup, repeats):
    """(threads -> one-token ms of the first format's chosen kernel, the best count)."""
    if not formats:
        return {}, None
    label = formats[0].label()
    counts = list(threads or range(1, (os.cpu_count() or 1) + 1))
    x = torch.randn(1, k_in).to(formats[0].float_dtype or act)  # [1, K]
    name = choice[label][str(TOKEN_BUCKETS[0])]
    old = torch.get_num_threads()
    out: dict[str, float] = {}
    try:
        for t in counts:
            torch.set_num_threads(t)
            out[str(t)] = _time(name, x, mats[label], warmup, repeats)
    finally:
        torch.set_num_threads(old)
    return out, int(min(out, key=out.get))
