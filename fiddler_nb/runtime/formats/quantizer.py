"""Quantize routed experts while transformers reads the checkpoint (no full float copy).

transformers' loader (5.x, `core_model_loading`) builds each fused expert parameter of one layer
from the checkpoint's per-expert tensors and, when a quantizer says the parameter "needs
quantization", runs the quantizer's op on it before setting it on the model; with such a
quantizer it also loads synchronously (no reader threads racing ahead). We register one
(`fiddler_nb_experts`, through `register_quantizer` / `register_quantization_config`), so the
float copy of at most one fused matrix of one layer is alive next to the quantized experts
already loaded, instead of every float expert. The conversion itself is storage.convert_weight,
the same as for an in-memory model.

Shape legend: E = experts, N = output channels, K = input channels, G = int4 group size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..model.adapters import find_moe_layers, is_experts_module, layout_of
from ..errors import CheckpointError
from .quant import ExpertFormat
from .quantize_load import check_finite, layer_of
from .storage import ExpertStorage, convert_weight

METHOD = "fiddler_nb_experts"
_REGISTERED: dict[str, Any] = {}
# transformers collects an op's exception into its loading report and raises a generic
# RuntimeError at the end; the first of ours is kept here so the loader can raise it instead
_FAILED: list[Exception] = []


def raise_recorded() -> None:
    """Raise (and forget) the first error met while quantizing, if any (loading.load_model)."""
    if _FAILED:
        err = _FAILED[0]
        _FAILED.clear()
        raise err from None


def quantization_config(fmt: ExpertFormat, act_dtype: torch.dtype, on_gpu: bool):
    """The transformers QuantizationConfig that makes `from_pretrained` quantize experts."""
    config_cls, _ = _register()
    _FAILED.clear()
    return config_cls(expert_format=fmt.name, group_size=fmt.group_size,
                      act_dtype=str(act_dtype).removeprefix("torch."), on_gpu=on_gpu,
                      int4_layout=fmt.int4_layout)


def _register():
    """Define and register the config and quantizer classes once (transformers imported lazily)."""
    if _REGISTERED:
        return _REGISTERED["config"], _REGISTERED["quantizer"]
    from transformers.core_model_loading import ConversionOps
    from transformers.quantizers.auto import register_quantization_config, register_quantizer
    from transformers.quantizers.base import HfQuantizer
    from transformers.utils.quantization_config import QuantizationConfigMixin

    class ExpertQuantConfig(QuantizationConfigMixin):
        def __init__(self, expert_format: str = "int8", group_size: int | None = None,
                     act_dtype: str = "float32", on_gpu: bool = False,
                     int4_layout: str = "torch", **kwargs):
            self.quant_method = METHOD
            self.expert_format, self.group_size = expert_format, group_size
            self.act_dtype, self.on_gpu, self.int4_layout = act_dtype, on_gpu, int4_layout

        @property
        def fmt(self) -> ExpertFormat:
            return ExpertFormat(self.expert_format, self.group_size, int4_layout=self.int4_layout)

    class QuantizeExperts(ConversionOps):
        """Fused float matrix of one layer -> the format's tensors (storage.convert_weight)."""

        def __init__(self, quantizer):
            self.quantizer = quantizer

        def convert(self, input_dict: dict[str, Any], **kwargs) -> dict[str, torch.Tensor]:
            out: dict[str, torch.Tensor] = {}
            cfg = self.quantizer.quantization_config
            for key, value in input_dict.items():
                w = value[0] if isinstance(value, list) else value
                try:
                    check_finite(w, layer_of(key), key.rsplit(".", 1)[-1])
                except CheckpointError as err:
                    _FAILED.append(err)
                    raise
                parts = convert_weight(w, cfg.fmt, self.quantizer.transposed[key],
                                       getattr(torch, cfg.act_dtype), cfg.on_gpu)
                del w
                out.update({key + suffix: t for suffix, t in parts.items()})
            return out

    class ExpertQuantizer(HfQuantizer):
        requires_calibration = False

        def __init__(self, quantization_config, **kwargs):
            super().__init__(quantization_config, **kwargs)
            self.transposed: dict[str, bool] = {}  # fused parameter name -> stored [E, K, N]

        def _process_model_before_weight_loading(self, model, **kwargs):
            """Give each experts module (on the meta device) the format's tensors, so the
            loader can set them; remember which parameters to quantize."""
            cfg = self.quantization_config
            act = getattr(torch, cfg.act_dtype)
            for name, module in model.named_modules():
                if not is_experts_module(module):
                    continue
                layout = layout_of(module)
                storage = ExpertStorage(layout, cfg.fmt, cfg.on_gpu)
                for matrix in storage.matrix_names:
                    meta = getattr(module, matrix)
                    # shapes from converting one meta-free expert of zeros (cheap and exact)
                    probe = torch.zeros((1, *meta.shape[1:]), dtype=torch.float32)
                    parts = convert_weight(probe, cfg.fmt, layout.is_transposed, act, cfg.on_gpu)
                    del module._parameters[matrix]
                    for suffix, t in parts.items():
                        module._parameters[matrix + suffix] = nn.Parameter(
                            torch.empty((meta.shape[0], *t.shape[1:]), dtype=t.dtype,
                                        device="meta"), requires_grad=False)
                    self.transposed[f"{name}.{matrix}"] = layout.is_transposed
            return model

        def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
            return param_name in self.transposed

        def get_quantize_ops(self):
            return QuantizeExperts(self)

        def _process_model_after_weight_loading(self, model, **kwargs):
            return model

        def is_serializable(self):
            return False

        @property
        def is_trainable(self):
            return False

    register_quantization_config(METHOD)(ExpertQuantConfig)
    register_quantizer(METHOD)(ExpertQuantizer)
    _REGISTERED.update(config=ExpertQuantConfig, quantizer=ExpertQuantizer)
    return ExpertQuantConfig, ExpertQuantizer


def detach_quantizer(model: nn.Module) -> None:
    """Forget the quantizer after loading: the model is ours to run (and never re-saved as
    quantized, since the format is a runtime choice, not a checkpoint format)."""
    for attr in ("hf_quantizer",):
        if hasattr(model, attr):
            setattr(model, attr, None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    find_moe_layers(model)  # the experts are still recognised with their new tensors
