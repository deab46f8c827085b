"""Placeholder: MXFP4 gpt-oss safetensors (filled in below)."""

from __future__ import annotations

from pathlib import Path


def is_mxfp4_checkpoint(root: Path) -> bool:
    return False
