"""What the user will run -- prompt length, new tokens, batch -- and the fast-device memory it needs.

A `Workload` turns the model config and dtype into the bytes kept free next to the resident
experts: the KV cache at the workload's full context plus an activation estimate. The largest
valid expert budget therefore depends on the workload (`experts_that_fit`), and a budget that
leaves too little room is refused with the numbers (`check_fits`).

KV cache per layer, as transformers 5.x stores it (checked against the real cache after a
generation in tests/test_workload.py; the cache holds context - 1 tokens when generation ends,
the last token is never fed back):
  full attention     2 x kv_heads x head_dim x tokens          (keys and values)
  sliding window     the same with tokens capped at window - 1 (DynamicSlidingWindowLayer)
  MLA (DeepSeek)     (kv_lora_rank + qk_rope_head_dim) x tokens (the compressed latents, 1 head)
  moe / mlp blocks   nothing (hybrid configs that list them as layer types)
Layer types come from `config.layer_types`, else as transformers' `get_layer_types_and_kwargs`
infers them (sliding_window set -> sliding, attention_chunk_size -> chunked, else full).
Linear-attention / Mamba layers keep a constant-size state that is not modelled here; they are
named in `KvEstimate.notes` so the figure never silently claims to cover them.

Activations (an estimate, not measured): per prompt token ACTIVATION_HIDDEN_COPIES hidden-size
vectors plus the MoE intermediate of every routed expert, the last token's fp32 logits, and --
only with eager attention, which materialises it -- one layer's attention scores (heads x prompt
x context); SDPA / flash kernels work in tiles and need no such matrix. Shape legend: B = batch, T = tokens, H = hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import BudgetError, OptionError
from ..validate import check_int

GIB = 1 << 30
ACTIVATION_HIDDEN_COPIES = 8  # residual, normed input, q/k/v/o outputs and the MoE sum, at once
LOGITS_BYTES = 4  # generate upcasts the last position's logits to fp32
FULL, SLIDING, CHUNKED = "full_attention", "sliding_attention", "chunked_attention"
NO_CACHE_LAYERS = ("moe", "mlp", "dummy")  # FFN blocks of hybrids, layers sharing another's KV


@dataclass(frozen=True)
class KvEstimate:
    """KV-cache bytes of one configuration, and what the arithmetic did not cover."""

    bytes: int
    per_layer: tuple[int, ...]  # [decoder layers]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Workload:
    """A workload: `batch` sequences of `prompt_tokens`, `new_tokens` generated each.

    context: the longest sequence the KV cache must hold (default prompt + new tokens).
    """

    prompt_tokens: int = 512
    new_tokens: int = 128
    batch: int = 1
    context: int | None = None

    def __post_init__(self):
        for name in ("prompt_tokens", "new_tokens", "batch"):
            check_int(f"Workload {name}", getattr(self, name), minimum=1)
        if self.context is not None and (not isinstance(self.context, int)
                                         or self.context < self.prompt_tokens + self.new_tokens):
            raise OptionError(f"Workload context={self.context!r} is shorter than prompt + new "
                              f"tokens ({self.prompt_tokens + self.new_tokens}); leave it None "
                              "or pass a larger integer")

    @property
    def context_tokens(self) -> int:
        return self.context if self.context is not None else self.prompt_tokens + self.new_tokens

    def kv_cache(self, model_config: Any, dtype_bytes: int) -> KvEstimate:
        """The KV cache at the full context for `batch` sequences."""
        return kv_cache_bytes(model_config, self.context_tokens, self.batch, dtype_bytes)

    def activation_bytes(self, model_config: Any, dtype_bytes: int) -> int:
        """Peak activations of the prefill (an estimate; see the module docstring)."""
        cfg = _text_config(model_config)
        tokens = self.batch * self.prompt_tokens
        hidden = cfg.hidden_size * ACTIVATION_HIDDEN_COPIES
        moe = 2 * _moe_intermediate(cfg) * int(getattr(cfg, "num_experts_per_tok", 1) or 1)
        eager = getattr(model_config, "_attn_implementation", None) == "eager"
        scores = self.batch * cfg.num_attention_heads * self.prompt_tokens * self.context_tokens \
            if eager else 0
        logits = self.batch * cfg.vocab_size * LOGITS_BYTES
        return int((tokens * (hidden + moe) + scores) * dtype_bytes + logits)

    def reserve_bytes(self, model_config: Any, dtype_bytes: int) -> int:
        """Fast-device bytes kept free for this workload: KV cache + activations."""
        return self.kv_cache(model_config, dtype_bytes).bytes + \
            self.activation_bytes(model_config, dtype_bytes)

    def reserve_for(self, model: Any) -> tuple[int, int]:
        """(KV-cache bytes, activation bytes) for a loaded transformers model (its config, and
        the dtype of its embeddings, which the cache and activations take)."""
        dtype_bytes = model.get_input_embeddings().weight.element_size()
        return (self.kv_cache(model.config, dtype_bytes).bytes,
                self.activation_bytes(model.config, dtype_bytes))

    def describe(self, model_config: Any, dtype_bytes: int) -> str:
        kv = self.kv_cache(model_config, dtype_bytes)
        act = self.activation_bytes(model_config, dtype_bytes)
        text = (f"workload: batch {self.batch} x (prompt {self.prompt_tokens} + new "
                f"{self.new_tokens}), context {self.context_tokens}: KV cache "
                f"{_size(kv.bytes)} + activations ~{_size(act)} (estimate)")
        return text + "".join(f"; {n}" for n in kv.notes)


def check_workload(workload: Any) -> Workload | None:
    """A Workload or None (anything else: OptionError)."""
    if workload is not None and not isinstance(workload, Workload):
        raise OptionError(f"workload must be a fnb.Workload or None, got {type(workload).__name__}")
    return workload


def kv_cache_bytes(model_config: Any, tokens: int, batch: int, dtype_bytes: int) -> KvEstimate:
    """Bytes of transformers' KV cache holding `tokens` tokens of `batch` sequences."""
    cfg = _text_config(model_config)
    window = getattr(cfg, "sliding_window", None)
    chunk = getattr(cfg, "attention_chunk_size", None)
    default = SLIDING if window is not None else CHUNKED if chunk is not None else FULL
    types = list(getattr(cfg, "layer_types", None) or [default] * cfg.num_hidden_layers)
    per_token = _kv_elements_per_token(cfg)
    per_layer, skipped = [], []
    for kind in types:
        if kind == FULL:
            held = tokens
        elif kind == SLIDING and window:
            held = min(tokens, int(window) - 1)
        elif kind == CHUNKED and chunk:
            held = min(tokens, int(chunk) - 1)
        else:
            held = 0
            if kind not in NO_CACHE_LAYERS:
                skipped.append(kind)
        per_layer.append(batch * held * per_token * dtype_bytes)
    notes = ()
    if skipped:
        notes = (f"{len(skipped)} {'/'.join(sorted(set(skipped)))} layer(s): constant-size state "
                 "not counted",)
    return KvEstimate(sum(per_layer), tuple(per_layer), notes)


def _kv_elements_per_token(cfg: Any) -> int:
    """Cached elements per token per attention layer (keys + values)."""
    # MLA caches the compressed latents, one head; the config class must declare the field
    # (transformers keeps unknown config kwargs as attributes of any config)
    if hasattr(type(cfg), "kv_lora_rank") and getattr(cfg, "kv_lora_rank", None):
        return int(cfg.kv_lora_rank) + int(cfg.qk_rope_head_dim)
    heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * heads * int(head_dim)


def _moe_intermediate(cfg: Any) -> int:
    for name in ("moe_intermediate_size", "intermediate_size"):
        value = getattr(cfg, name, None)
        if value:
            return int(value)
    return int(cfg.hidden_size)


def _text_config(cfg: Any) -> Any:
    get = getattr(cfg, "get_text_config", None)
    return get() if get is not None else cfg


def experts_that_fit(free_bytes: int, reserve_bytes: int, expert_bytes: int, total: int) -> int:
    """Experts that fit in `free_bytes` after keeping `reserve_bytes` free (pure arithmetic)."""
    return int(min(total, max(0, (free_bytes - reserve_bytes) // expert_bytes)))


def check_fits(budget: int, free_bytes: int, expert_bytes: int, total: int, kv_bytes: int,
               activation_bytes: int, device: str = "the fast device") -> None:
    """Refuse a budget that leaves less than the workload's KV cache + activations free."""
    fit = experts_that_fit(free_bytes, kv_bytes + activation_bytes, expert_bytes, total)
    if budget > fit:
        raise BudgetError(
            f"expert budget {budget} ({_size(budget * expert_bytes)}) leaves too little room on "
            f"{device} for the workload: its KV cache needs {_size(kv_bytes)} and activations "
            f"~{_size(activation_bytes)} of {_size(free_bytes)} free, so {fit} experts fit with "
            f"it; pass expert_budget<={fit} or a smaller Workload")


def _size(nbytes: int) -> str:
    return f"{nbytes / GIB:.3f} GiB" if nbytes >= GIB // 10 else f"{nbytes / (1 << 20):.2f} MiB"
