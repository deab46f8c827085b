"""Checkpoints that are not plain float safetensors, loaded as they are: which loader a path
needs. A GGUF file or folder (`gguf_load`); a safetensors gpt-oss checkpoint with MXFP4 experts
(`mxfp4_load`). Anything else is None: transformers' own loader (`loading`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..model.gguf_file import is_gguf_path


def open_source(root: Path, device: torch.device, dtype: torch.dtype | None, expert_dtype,
                group_size: int | None):
    """A checked source with `.layers`, `.fmt`, `.notes`, `.load_model()` and `.tokenizer()`,
    or None for a checkpoint transformers loads itself."""
    if is_gguf_path(root):
        from .gguf_load import GGUFSource

        return GGUFSource(root, device, dtype, expert_dtype, group_size)
    from .mxfp4_load import is_mxfp4_checkpoint

    if is_mxfp4_checkpoint(root):
        from .mxfp4_load import MXFP4Source

        return MXFP4Source(root, device, dtype, expert_dtype, group_size)
    return None
