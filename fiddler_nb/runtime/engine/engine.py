"""The engine: a transformers MoE model whose experts run where the policies say.

An `Engine` (built by `fnb.load` / `fnb.from_model`: api.py, runtime/engine/factory.py) plugs the
orchestrating experts forward into transformers, so `engine.model.generate(...)` works unchanged,
and owns the expert placement, the execution policy and the latency model. `engine.generate` adds timing and
per-layer statistics; `engine.trace_decode_step` a per-layer timeline of one decode step.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from transformers import DynamicCache

from ..model.adapters import MoELayer
from ..model.config import EngineConfig
from ..policies.execution import make_execution
from ..errors import ContextLengthError, EngineClosedError, InputError, OptionError
from .experts import ExpertStore
from ..kernels.registry import (NATIVE_Q8_KERNELS, KernelChoice, candidates,
                                quantizes_activations)
from .memory import MemoryReport, memory_report
from ..policies.latency import LatencyModel
from .orchestrate import IMPLEMENTATION_NAME, EngineState, LayerRuntime, register_with_transformers
from ..policies.placement import PlacementRequest, is_dynamic, make_placement
from ..policies.popularity import Popularity
from ..generation.stats import GenerationStats, StatsRecorder, phase_stats
from ..generation.timing import FirstTokenClock, sync, torch_threads, with_clock
from ..generation.trace import StepTrace, Tracer
from ..validate import (check_attention_mask, check_int, check_prompt_text, check_threads,
                       check_token_ids)
from ..generation.workload import Workload, check_workload

@dataclass(frozen=True)
class GenerationResult:
    text: list[str] | str  # str for one prompt and one sequence, else one string per row
    token_ids: torch.Tensor  # [B', new] generated tokens only (B' = B x num_return_sequences)
    stats: GenerationStats


class Engine:
    """A loaded model plus its expert placement and execution policy."""

    def __init__(self, model, tokenizer, layers: list[MoELayer], store: ExpertStore,
                 config: EngineConfig, latency: LatencyModel, popularity: Popularity | None,
                 path: str):
        self.model = model
        self.tokenizer = tokenizer
        self.layers = layers
        self.config = config
        self.path = path
        self.popularity = popularity
        self.device = store.device
        self.workload: Workload | None = None  # set_workload: the reserve kept for KV + activations
        self.load_notes: tuple[str, ...] = ()  # what loading kept, rounded or converted (GGUF, MXFP4)
        self._state = EngineState(store, make_execution(config.execution), latency,
                                  StatsRecorder(len(layers)),
                                  [[0] * layers[0].num_experts for _ in layers])
        self._previous_impl = model.config._experts_implementation
        for layer in layers:
            layer.module._fiddler_runtime = LayerRuntime(layer, self._state)
        register_with_transformers()
        model.set_experts_implementation(IMPLEMENTATION_NAME)

    # ---- facts -----------------------------------------------------------------------
    @property
    def placement(self) -> frozenset[tuple[int, int]]:
        """(MoE layer, expert) pairs resident on the fast device."""
        return self._open().store.placement

    @property
    def latency(self) -> LatencyModel:
        return self._open().latency

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_experts(self) -> int:
        return self.layers[0].num_experts

    @property
    def expert_bytes(self) -> int:
        """Bytes of one expert as stored for the fast device (what a transfer moves)."""
        return self._open().store.expert_bytes

    @property
    def expert_dtype(self) -> str:
        """The routed experts' format: 'bf16', 'fp32', 'int8', 'int4-g64', ..."""
        return self._open().store.storage.fmt.label()

    @property
    def kernels(self) -> KernelChoice:
        """The CPU kernel per format and token count (measured or the default)."""
        return self._open().store.kernels

    @property
    def activation_quant(self) -> bool:
        """Whether CPU kernels that round activations to int8 blocks may run (fnb.load's
        allow_activation_quant; faster for int8 / int4 weights, not exact)."""
        return self._open().store.activation_quant

    def set_activation_quant(self, allow: bool) -> None:
        """Allow (or stop) CPU kernels that round activations to int8 blocks, as
        fnb.load(allow_activation_quant=) does; takes effect at the next forward."""
        if not isinstance(allow, bool):
            raise OptionError(f"set_activation_quant takes True or False, got {allow!r}")
        store = self._open().store
        store.activation_quant = allow
        store.kernels = store.kernels.allowing_activation_quant(allow)

    def set_kernels(self, kernels: KernelChoice) -> None:
        """Use this kernel choice (the engine's allow_activation_quant setting stays)."""
        store = self._open().store
        store.kernels = kernels.allowing_activation_quant(store.activation_quant)
        if kernels.threads is not None:
            torch.set_num_threads(kernels.threads)

    def memory(self) -> MemoryReport:
        """Host and fast-device bytes: experts by format, non-experts, residents, scratch."""
        return memory_report(self.model, self._open().store)

    @property
    def closed(self) -> bool:
        return self._state is None

    @property
    def pad_token_id(self) -> int | None:
        tok = self.tokenizer
        if tok is not None and tok.pad_token_id is not None:
            return tok.pad_token_id
        return getattr(self.model.generation_config, "pad_token_id", None)

    @property
    def vocab_size(self) -> int | None:
        """Rows of the input embedding: the valid token ids are 0..vocab_size-1."""
        embeddings = self.model.get_input_embeddings() if self.model is not None else None
        if embeddings is None:
            return None
        rows = getattr(embeddings, "num_embeddings", None)  # kept GGUF tables hold no weight
        return int(rows) if isinstance(rows, int) else int(embeddings.weight.shape[0])

    @property
    def max_context(self) -> int | None:
        """The model's context in tokens (config.max_position_embeddings), if it states one."""
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if isinstance(value, int) and value > 0 else None

    def check_context(self, prompt_tokens: int, max_new_tokens: int,
                      allow_beyond_context: bool = False) -> None:
        """Refuse a prompt plus new tokens that exceed the model's context (with the numbers)."""
        limit = self.max_context
        if limit is None or allow_beyond_context or prompt_tokens + max_new_tokens <= limit:
            return
        raise ContextLengthError(
            f"prompt of {prompt_tokens} tokens + max_new_tokens={max_new_tokens} = "
            f"{prompt_tokens + max_new_tokens} exceeds this model's context of {limit} tokens; "
            f"shorten the prompt, pass max_new_tokens<={max(limit - prompt_tokens, 0)}, or "
            "allow_beyond_context=True if the model extrapolates")

    @property
    def notes(self) -> tuple[str, ...]:
        """What a user should know about how this engine decides (shown in its repr)."""
        notes = list(self.load_notes)
        if self.config.placement == "popularity" and self.popularity is None \
                and self.config.expert_budget > 0:
            notes.append("no routing profile yet: experts placed 'layer-balanced' until "
                         "fnb.calibrate(engine, prompts) or popularity= records one")
        if getattr(self, "kernel_note", ""):
            notes.append(self.kernel_note)
        if self._state is not None and self._state.store.activation_quant:
            store = self._state.store
            fmt = store.storage.fmt
            name = store.kernels.kernel_name(fmt.label(), fmt.matrix_fmt, 1,
                                             getattr(torch, self.config.dtype))
            q8 = NATIVE_Q8_KERNELS.get(fmt.matrix_fmt)
            why = " (activations rounded to int8 per 32 inputs; not exact)" \
                if quantizes_activations(name) else \
                f" (exact: measured faster here than {q8})" if q8 in candidates(
                    fmt.matrix_fmt, activation_quant=True) else \
                " (exact: no such kernel runs here)"
            notes.append(f"activation quantization allowed: at one token the {fmt.label()} "
                         f"experts run {name}{why}")
        return tuple(notes)

    def max_resident_experts(self) -> int:
        """How many experts fit on the fast device now (the largest valid budget)."""
        return self._open().store.max_resident_experts()

    @property
    def routing_counts(self) -> list[list[int]]:
        """[L][E] (token, expert) pairs routed since the last `reset_routing_counts()`."""
        return [list(row) for row in self._open().routing_counts]

    def reset_routing_counts(self) -> None:
        for row in self._open().routing_counts:
            row[:] = [0] * len(row)

    def _open(self) -> EngineState:
        if self._state is None:
            raise EngineClosedError("this engine is closed; load the model again with fnb.load(...)")
        return self._state

    # ---- re-configuration (no reload) -------------------------------------------------
    def set_expert_budget(self, n: int) -> None:
        """Re-place experts for a budget of `n`; on error the old placement stays."""
        self._place(replace(self.config, expert_budget=n))

    def reconfigure(self, expert_budget: int | None = None, placement: str | None = None,
                    execution: str | None = None, threads: int | None = None) -> None:
        """Change several settings with one re-placement (one round of weight copies)."""
        if execution is not None:
            make_execution(execution)  # validate before touching anything
        check_threads(threads)
        changes = {k: v for k, v in (("expert_budget", expert_budget), ("placement", placement))
                   if v is not None}
        if changes:
            self._place(replace(self.config, **changes))  # the only step that can fail
        if execution is not None:
            self.set_execution(execution)
        if threads is not None:
            self.set_threads(threads)

    def set_placement(self, name: str) -> None:
        self._place(replace(self.config, placement=name))

    def set_execution(self, name: str) -> None:
        self._open().execution = make_execution(name)
        self.config = replace(self.config, execution=name)

    def set_threads(self, threads: int | None) -> None:
        """torch CPU threads used while generating (None: whatever torch is set to)."""
        self.config = replace(self.config, threads=check_threads(threads))

    def set_workload(self, workload: Workload | None) -> None:
        """Keep `workload`'s KV cache + activations free on the fast device (None: the fixed
        default); refused, with the numbers, if the current budget then no longer fits."""
        store = self._open().store
        check_workload(workload)
        old = (store.reserve_bytes, store.reserve_split)
        if workload is not None:
            store.set_reserve(*workload.reserve_for(self.model))
        try:
            store.check_budget(self.config.expert_budget)
        except BaseException:
            store.reserve_bytes, store.reserve_split = old
            raise
        self.workload = workload

    def stream(self, prompt: str | torch.Tensor, max_new_tokens: int = 32,
               **generate_kwargs: Any):
        """Text pieces as tokens are produced (a `GenerationStream`; runtime/generation/streaming.py)."""
        from ..generation.streaming import GenerationStream

        return GenerationStream(self, prompt, max_new_tokens, generate_kwargs)

    def chat(self, messages, max_new_tokens: int = 128, stream: bool = False,
             chat_template: str | None = None, **generate_kwargs: Any):
        """The next assistant turn after `messages` (runtime/generation/chat.py): a GenerationResult, or
        with stream=True the same iterator as `stream`."""
        from ..generation.chat import chat

        return chat(self, messages, max_new_tokens, stream, chat_template, **generate_kwargs)

    def set_latency_model(self, latency: LatencyModel) -> None:
        self._open().latency = latency

    def set_popularity(self, popularity: Popularity) -> None:
        """Use these routing counts; placement 'popularity' re-places at once."""
        popularity.check_shape(self.num_layers, self.num_experts)
        self.popularity = popularity
        if self.config.placement == "popularity":
            self._place(self.config)

    def _place(self, config: EngineConfig) -> None:
        state = self._open()
        policy = make_placement(config.placement)
        state.store.check_budget(config.expert_budget)
        counts = self.popularity.counts if self.popularity is not None else None
        request = PlacementRequest(self.num_layers, self.num_experts, config.expert_budget,
                                   counts, config.seed)
        if config.expert_budget == 0 and not is_dynamic(policy):
            placed = frozenset()  # nothing to rank: no popularity needed, no warning
        else:
            placed = policy.place(request)
        state.store.set_placement(placed)
        state.cache = policy if is_dynamic(policy) else None
        self.config = config

    # ---- running ---------------------------------------------------------------------
    def encode(self, prompt: str | Sequence[str] | torch.Tensor,
               attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Token ids and attention mask on the fast device for a prompt, prompts or ids
        (left-padded ids need their `attention_mask`)."""
        self._open()
        if isinstance(prompt, torch.Tensor):
            ids = check_token_ids(prompt, self.vocab_size)  # [B, T]
            mask = torch.ones_like(ids) if attention_mask is None \
                else check_attention_mask(attention_mask, ids)
            return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        texts = check_prompt_text(prompt)
        if self.tokenizer is None:
            raise InputError(f"{self.path} has no tokenizer; pass token ids instead of text")
        batch = self.tokenizer(texts, return_tensors="pt", padding=True)
        return {k: v.to(self.device) for k, v in batch.items()}

    def generate(self, prompt: str | Sequence[str] | torch.Tensor, max_new_tokens: int = 32,
                 allow_beyond_context: bool = False, **generate_kwargs: Any) -> GenerationResult:
        """Greedy by default; any Hugging Face generate() keyword passes through (a streamer
        you pass runs inside the timed region). A prompt plus `max_new_tokens` beyond the
        model's context is refused unless `allow_beyond_context=True`."""
        check_int("max_new_tokens", max_new_tokens, minimum=1)
        state = self._open()
        inputs = self.encode(prompt, generate_kwargs.pop("attention_mask", None))
        batch, prompt_len = inputs["input_ids"].shape
        self.check_context(prompt_len, max_new_tokens, allow_beyond_context)
        generate_kwargs.setdefault("do_sample", False)
        generate_kwargs.setdefault("pad_token_id", self.pad_token_id)
        stats = state.stats
        stats.reset()
        clock = FirstTokenClock(self.device, on_first=lambda: setattr(stats, "phase", "decode"))
        sync(self.device)
        start = time.perf_counter()
        try:
            with torch.inference_mode(), torch_threads(self.config.threads):
                out = self.model.generate(**inputs, max_new_tokens=max_new_tokens,
                                          **with_clock(generate_kwargs, clock))
            sync(self.device)
        finally:
            end = time.perf_counter()
            phases = {ph: phase_stats(stats, ph, 0.0, 0) for ph in ("prefill", "decode")}
            stats.phase = "prefill"  # later direct forwards (model.generate, calibrate) count here
        sequences = getattr(out, "sequences", out)  # return_dict_in_generate gives an output
        new_ids = sequences[:, prompt_len:]  # [B', new]
        rows, new = int(new_ids.shape[0]), int(new_ids.shape[1])
        first = clock.first_token_at or end
        gen_stats = GenerationStats(
            batch_size=rows, prompt_tokens=prompt_len, new_tokens=new,
            prefill=replace(phases["prefill"], seconds=first - start, tokens=batch * prompt_len),
            decode=replace(phases["decode"], seconds=end - first, tokens=rows * max(new - 1, 0)),
            device=str(self.device), notes=(f"latency model: {self.latency.source}",) + self.notes)
        texts = self.tokenizer.batch_decode(new_ids, skip_special_tokens=True) \
            if self.tokenizer is not None else []
        text = texts[0] if isinstance(prompt, str) and len(texts) == 1 else texts
        return GenerationResult(text, new_ids.cpu(), gen_stats)

    def trace_decode_step(self, prompt: str | Sequence[str] | torch.Tensor) -> StepTrace:
        """Prefill `prompt`, then time one decode step per layer and lane (CPU/GPU/transfer)."""
        state = self._open()
        inputs = self.encode(prompt)
        with torch.inference_mode():
            cache = DynamicCache(config=self.model.config)
            out = self.model(**inputs, cache=cache, use_cache=True)
            next_ids = out.logits[:, -1:].argmax(dim=-1)  # [B, 1]
            mask = torch.cat([inputs["attention_mask"], torch.ones_like(next_ids)], dim=1)
            state.tracer = Tracer(self.device)
            try:
                self.model(input_ids=next_ids, attention_mask=mask, cache=cache, use_cache=True)
                return state.tracer.finish(int(next_ids.shape[0]))
            finally:
                state.tracer = None

    def logits(self, prompt: str | Sequence[str] | torch.Tensor) -> torch.Tensor:
        """[B, T, V] next-token logits of one forward pass (for checks against stock)."""
        with torch.inference_mode():
            return self.model(**self.encode(prompt)).logits

    def _sync(self) -> None:
        sync(self.device)

    def close(self) -> None:
        """Free the fast-device memory this engine holds and detach it from the model (which
        then runs its experts the stock way again -- except int8 / int4 experts, which stay
        compressed: stock transformers cannot run those; load the checkpoint again)."""
        if self._state is None:
            return
        self._state.store.release()
        for layer in self.layers:
            layer.module.__dict__.pop("_fiddler_runtime", None)
        if self.model is not None:
            self.model.set_experts_implementation(self._previous_impl or "grouped_mm")
            from .dense import unroute_dense_linears

            unroute_dense_linears(self.model)
        self.model = None
        self.layers = []  # drop every reference to the experts' CPU weights
        self._state = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __repr__(self) -> str:
        if self.closed:
            return f"Engine({self.path!s}, closed)"
        c = self.config
        notes = "".join(f"; note: {n}" for n in self.notes)
        return (f"Engine({self.path!s}, device={self.device}, {self.num_layers} MoE layers x "
                f"{self.num_experts} experts {self.expert_dtype}, budget={c.expert_budget}, "
                f"placement={c.placement!r}, execution={c.execution!r}, "
                f"{self.memory().short()}{notes})")



