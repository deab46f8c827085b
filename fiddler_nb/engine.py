"""The engine: a transformers MoE model whose experts run where the policies say.

`fnb.load(path, ...)` checks the checkpoint, loads it with non-expert weights on the fast device
and experts in CPU memory, places the GPU expert budget and plugs the orchestrating experts
forward into transformers, so `engine.model.generate(...)` works unchanged. `engine.generate`
adds timing and per-layer statistics.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import DynamicCache
from transformers.generation.streamers import BaseStreamer

from .adapters import MoELayer, find_moe_layers
from .config import EngineConfig, resolve_device, resolve_dtype
from .execution import make_execution
from .experts import GIB, ExpertStore
from .latency import LatencyModel, default_latency_model
from .loading import check_checkpoint, check_moe_config, load_model, move_non_experts
from .orchestrate import IMPLEMENTATION_NAME, EngineState, LayerRuntime, register_with_transformers
from .placement import PlacementRequest, is_dynamic, make_placement
from .routing import Popularity
from .stats import GenerationStats, StatsRecorder, phase_stats
from .trace import StepTrace, Tracer


QUICK_PROFILE = "quick"  # profile= value: measure this machine at load time


@dataclass(frozen=True)
class GenerationResult:
    text: list[str] | str  # str for a single prompt, list for a batch
    token_ids: torch.Tensor  # [B, new] generated tokens only
    stats: GenerationStats


class _PhaseClock(BaseStreamer):
    """Marks the end of prefill: generate() hands the first new token to the streamer."""

    def __init__(self, engine: "Engine", inner: BaseStreamer | None = None):
        self.engine = engine
        self.inner = inner  # a streamer the caller passed to generate(), still served
        self.calls = 0
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:  # call 1 is the prompt, call 2 the first generated token
            self.engine._sync()
            self.first_token_at = time.perf_counter()
            self.engine._state.stats.phase = "decode"
        if self.inner is not None:
            self.inner.put(value)

    def end(self) -> None:
        if self.inner is not None:
            self.inner.end()


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
        self._state = EngineState(store, make_execution(config.execution), latency,
                                  StatsRecorder(len(layers)),
                                  [[0] * layers[0].num_experts for _ in layers])
        for layer in layers:
            layer.module._fiddler_runtime = LayerRuntime(layer, self._state)
        register_with_transformers()
        model.set_experts_implementation(IMPLEMENTATION_NAME)

    # ---- facts -----------------------------------------------------------------------
    @property
    def placement(self) -> frozenset[tuple[int, int]]:
        """(MoE layer, expert) pairs resident on the fast device."""
        return self._state.store.placement

    @property
    def latency(self) -> LatencyModel:
        return self._state.latency

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_experts(self) -> int:
        return self.layers[0].num_experts

    @property
    def expert_bytes(self) -> int:
        return self.layers[0].expert_bytes

    @property
    def pad_token_id(self) -> int | None:
        tok = self.tokenizer
        if tok is not None and tok.pad_token_id is not None:
            return tok.pad_token_id
        return getattr(self.model.generation_config, "pad_token_id", None)

    # ---- re-configuration (no reload) -------------------------------------------------
    def set_expert_budget(self, n: int) -> None:
        """Re-place experts for a budget of `n`; on error the old placement stays."""
        self._place(replace(self.config, expert_budget=n))

    def reconfigure(self, expert_budget: int | None = None, placement: str | None = None,
                    execution: str | None = None) -> None:
        """Change several settings with one re-placement (one round of weight copies)."""
        if execution is not None:
            make_execution(execution)  # validate before touching anything
        changes = {k: v for k, v in (("expert_budget", expert_budget), ("placement", placement))
                   if v is not None}
        if changes:
            self._place(replace(self.config, **changes))
        if execution is not None:
            self.set_execution(execution)

    def set_placement(self, name: str) -> None:
        self._place(replace(self.config, placement=name))

    def set_execution(self, name: str) -> None:
        self._state.execution = make_execution(name)
        self.config = replace(self.config, execution=name)

    def set_latency_model(self, latency: LatencyModel) -> None:
        self._state.latency = latency

    def use_profile(self, profile: Any) -> LatencyModel:
        """Decide `auto` from a HardwareProfile (or its JSON path, or "quick": measure now)."""
        if isinstance(profile, str) and profile == QUICK_PROFILE:
            from .profiler import profile_hardware

            profile = profile_hardware(self, quick=True)
        latency = _latency_from(profile, self.expert_bytes, self.model, self.device)
        self.set_latency_model(latency)
        return latency

    def _check_popularity(self, popularity: Popularity) -> None:
        if (popularity.num_layers, popularity.num_experts) != (self.num_layers, self.num_experts):
            raise ValueError(f"popularity is [{popularity.num_layers}, {popularity.num_experts}] "
                             f"but the model has {self.num_layers} MoE layers x "
                             f"{self.num_experts} experts; record it on this model")

    def set_popularity(self, popularity: Popularity) -> None:
        """Use these routing counts; placement 'popularity' re-places at once."""
        self._check_popularity(popularity)
        self.popularity = popularity
        if self.config.placement == "popularity":
            self._place(self.config)

    def _place(self, config: EngineConfig) -> None:
        policy = make_placement(config.placement)
        store = self._state.store
        store.check_budget(config.expert_budget)
        counts = self.popularity.counts if self.popularity is not None else None
        request = PlacementRequest(self.num_layers, self.num_experts, config.expert_budget,
                                   counts, config.seed)
        if config.expert_budget == 0 and not is_dynamic(policy):
            placed = frozenset()  # nothing to rank: no popularity needed, no warning
        else:
            placed = policy.place(request)
        store.set_placement(placed)
        self._state.cache = policy if is_dynamic(policy) else None
        self.config = config

    # ---- running ---------------------------------------------------------------------
    def encode(self, prompt: str | Sequence[str] | torch.Tensor) -> dict[str, torch.Tensor]:
        """Token ids (and attention mask) on the fast device for a prompt, prompts or ids."""
        if _is_empty(prompt):
            raise ValueError("the prompt is empty; pass text, a list of texts or token ids")
        if isinstance(prompt, torch.Tensor):
            ids = prompt if prompt.dim() == 2 else prompt.unsqueeze(0)
            return {"input_ids": ids.to(self.device),
                    "attention_mask": torch.ones_like(ids, device=self.device)}
        if self.tokenizer is None:
            raise ValueError(f"{self.path} has no tokenizer; pass token ids instead of text")
        batch = self.tokenizer([prompt] if isinstance(prompt, str) else list(prompt),
                               return_tensors="pt", padding=True)
        return {k: v.to(self.device) for k, v in batch.items()}

    def generate(self, prompt: str | Sequence[str] | torch.Tensor, max_new_tokens: int = 32,
                 **generate_kwargs: Any) -> GenerationResult:
        """Greedy by default; any Hugging Face generate() keyword passes through."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        inputs = self.encode(prompt)
        batch, prompt_len = inputs["input_ids"].shape
        generate_kwargs.setdefault("do_sample", False)
        generate_kwargs.setdefault("pad_token_id", self.pad_token_id)
        stats = self._state.stats
        stats.reset()
        clock = _PhaseClock(self, generate_kwargs.pop("streamer", None))
        self._sync()
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=clock,
                                      **generate_kwargs)
        self._sync()
        end = time.perf_counter()
        new_ids = out[:, prompt_len:]  # [B, new]
        new = int(new_ids.shape[1])
        first = clock.first_token_at or end
        gen_stats = GenerationStats(
            batch_size=batch, prompt_tokens=prompt_len, new_tokens=new,
            prefill=phase_stats(stats, "prefill", first - start, batch * prompt_len),
            decode=phase_stats(stats, "decode", end - first, batch * max(new - 1, 0)),
            device=str(self.device), notes=(f"latency model: {self.latency.source}",))
        texts = self.tokenizer.batch_decode(new_ids, skip_special_tokens=True) \
            if self.tokenizer is not None else []
        text = texts[0] if isinstance(prompt, str) and texts else texts
        return GenerationResult(text, new_ids.cpu(), gen_stats)

    def trace_decode_step(self, prompt: str | Sequence[str] | torch.Tensor) -> StepTrace:
        """Prefill `prompt`, then time one decode step per layer and lane (CPU/GPU/transfer)."""
        inputs = self.encode(prompt)
        with torch.inference_mode():
            cache = DynamicCache(config=self.model.config)
            out = self.model(**inputs, cache=cache, use_cache=True)
            next_ids = out.logits[:, -1:].argmax(dim=-1)  # [B, 1]
            mask = torch.cat([inputs["attention_mask"], torch.ones_like(next_ids)], dim=1)
            self._state.tracer = Tracer(self.device)
            try:
                self.model(input_ids=next_ids, attention_mask=mask, cache=cache, use_cache=True)
                return self._state.tracer.finish(int(next_ids.shape[0]))
            finally:
                self._state.tracer = None

    def logits(self, prompt: str | Sequence[str] | torch.Tensor) -> torch.Tensor:
        """[B, T, V] next-token logits of one forward pass (for checks against stock)."""
        with torch.inference_mode():
            return self.model(**self.encode(prompt)).logits

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        """Free the fast-device memory this engine holds."""
        self._state.store.release()
        for layer in self.layers:
            layer.module.__dict__.pop("_fiddler_runtime", None)
        self.model = None
        self.layers = []  # drop every reference to the experts' CPU weights
        self._state = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __repr__(self) -> str:
        c = self.config
        return (f"Engine({self.path!s}, device={self.device}, {self.num_layers} MoE layers x "
                f"{self.num_experts} experts, budget={c.expert_budget}, placement={c.placement!r}, "
                f"execution={c.execution!r})")


def load(path: str | Path, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, expert_budget: int | None = None,
         placement: str = "popularity", execution: str = "auto",
         popularity: Popularity | str | Path | None = None,
         profile: Any = None, gpu_memory: str | int | None = None,
         scratch_slots: int = 2, seed: int = 0) -> Engine:
    """Load a checkpoint directory (or 'tiny') as an Engine. See the README for each argument.

    expert_budget: experts (all layers together) kept on the fast device; None = as many as fit
    (all of them on a CPU-only machine). gpu_memory: the same budget given as memory, e.g.
    "20GiB". profile: for `auto` execution, a HardwareProfile / LatencyModel / JSON path, or
    "quick" to measure this machine now (seconds); None uses the documented default
    (`latency.default_latency_model`), and `engine.latency.source` says which was used.
    """
    make_placement(placement), make_execution(execution)  # unknown names fail before loading
    if not isinstance(scratch_slots, int) or scratch_slots < 1:
        raise ValueError(f"scratch_slots must be >= 1 (GPU buffers for transferred experts), "
                         f"got {scratch_slots!r}")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    root = _resolve_path(path)
    check_checkpoint(root)
    check_moe_config(root)
    if isinstance(popularity, (str, Path)):
        popularity = Popularity.load(popularity)
    if expert_budget is not None and gpu_memory is not None:
        raise ValueError("pass expert_budget or gpu_memory, not both")
    model = store = None
    try:
        model = load_model(root, dev, torch_dtype)
        layers = find_moe_layers(model)
        store = ExpertStore(layers, dev, scratch_slots)
        tokenizer = _load_tokenizer(root)
        latency = _latency_from(profile, layers[0].expert_bytes, model, dev)
        budget = _budget(expert_budget, gpu_memory, store)
        config = EngineConfig(str(dev), str(layers[0].module.down_proj.dtype).removeprefix("torch."),
                              budget, placement, execution, scratch_slots, seed)
        engine = Engine(model, tokenizer, layers, store, config, latency, None, str(root))
        if isinstance(profile, str) and profile == QUICK_PROFILE:
            engine.use_profile(QUICK_PROFILE)
        if popularity is not None:
            engine._check_popularity(popularity)
            engine.popularity = popularity  # placed once, just below
        engine._place(config)
        return engine
    except BaseException:
        if store is not None:
            store.release()
        del model, store
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        raise


def _is_empty(prompt: Any) -> bool:
    if isinstance(prompt, torch.Tensor):
        return prompt.numel() == 0
    if isinstance(prompt, str):
        return not prompt
    return len(prompt) == 0 or any(not p for p in prompt)


def from_model(model, tokenizer=None, device: str | torch.device | None = None,
               expert_budget: int | None = None, placement: str = "popularity",
               execution: str = "auto", popularity: Popularity | None = None,
               profile: Any = None, scratch_slots: int = 2, seed: int = 0,
               name: str = "in-memory") -> Engine:
    """An Engine around a transformers MoE model already in memory (e.g. random weights of a
    real shape for benchmarks). Non-expert weights move to `device`; experts stay in CPU memory.
    """
    make_placement(placement), make_execution(execution)
    dev = resolve_device(device)
    layers = find_moe_layers(model)
    if any(getattr(layer.module, n).device.type != "cpu"
           for layer in layers for n in layer.layout.param_names):
        raise ValueError("from_model needs the experts in CPU memory; load the model on the CPU")
    model.eval()
    move_non_experts(model, dev)
    store = ExpertStore(layers, dev, scratch_slots)
    try:
        latency = _latency_from(profile, layers[0].expert_bytes, model, dev)
        config = EngineConfig(str(dev), str(layers[0].module.down_proj.dtype).removeprefix("torch."),
                              _budget(expert_budget, None, store), placement, execution,
                              scratch_slots, seed)
        engine = Engine(model, tokenizer, layers, store, config, latency, None, name)
        if isinstance(profile, str) and profile == QUICK_PROFILE:
            engine.use_profile(QUICK_PROFILE)
        if popularity is not None:
            engine._check_popularity(popularity)
            engine.popularity = popularity  # placed once, just below
        engine._place(config)
        return engine
    except BaseException:
        store.release()
        raise


def resolve_path(path: str | Path) -> Path:
    """'tiny' -> the embedded default checkpoint; anything else -> an expanded Path."""
    return _resolve_path(path)


def _resolve_path(path: str | Path) -> Path:
    if str(path) == "tiny":
        from .tiny import default_tiny_path

        return default_tiny_path()
    return Path(path).expanduser()


def _load_tokenizer(root: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(root)
    except (OSError, ValueError, TypeError):
        return None  # token ids still work; encode() says so if text is given


def _budget(expert_budget: int | None, gpu_memory: str | int | None, store: ExpertStore) -> int:
    if gpu_memory is not None:
        expert_budget = int(parse_bytes(gpu_memory) // store.expert_bytes)
        expert_budget = min(expert_budget, len(store.layers) * store.num_experts)
    if expert_budget is None:
        return store.max_resident_experts()
    return expert_budget


def parse_bytes(value: str | int) -> int:
    """'20GiB' / '20 GB' / '512MiB' / 1234 -> bytes."""
    if isinstance(value, int):
        return value
    units = {"gib": GIB, "gb": 10**9, "mib": 1 << 20, "mb": 10**6, "kib": 1 << 10, "kb": 10**3,
             "b": 1}
    text = str(value).strip().lower().replace(" ", "")
    for unit, factor in units.items():
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except ValueError:
                break
    raise ValueError(f"cannot read memory size {value!r}; write e.g. '20GiB' or '512MiB'")


def _latency_from(profile: Any, expert_bytes: int, model, device: torch.device) -> LatencyModel:
    if profile is None or (isinstance(profile, str) and profile == QUICK_PROFILE):
        # "quick": the engine measures once it exists (Engine.use_profile); until then the default
        hidden_bytes = model.config.hidden_size * next(model.parameters()).element_size()
        return default_latency_model(expert_bytes, hidden_bytes, device_type=device.type)
    if isinstance(profile, LatencyModel):
        return profile
    from .profiler import HardwareProfile

    if isinstance(profile, (str, Path)):
        profile = HardwareProfile.load(profile)
    hidden_bytes = model.config.hidden_size * next(model.parameters()).element_size()
    latency = profile.latency_model(expert_bytes, hidden_bytes)  # scaled if measured elsewhere
    if device.type == "cpu":  # the fast device is this CPU: a transfer is a copy plus CPU work
        latency = replace(latency, gpu=latency.cpu, activation_ms_per_token=0.0,
                          concurrent=False, notes=latency.notes + ("fast device is the CPU",))
    return latency
