"""int4 engines against stock transformers on the dequantized checkpoint: the same check as
test_compressed_exactness.py (tolerance and its reasoning there), in its own file so the two
test workers share the load (`--dist loadfile`)."""

from __future__ import annotations

import pytest

from fiddler_nb.runtime.model.adapters import TESTED_ARCHITECTURES

from test_compressed_exactness import check_against_dequantized

INT4_GROUP = 32  # the smallest group: the most scales, so a misplaced one is most likely seen


@pytest.mark.parametrize("arch", TESTED_ARCHITECTURES)
def test_int4_engine_matches_stock_on_dequantized(arch, cpu_kernels, tiny_checkpoints, dequantized,
                                                  stock_model):
    check_against_dequantized(arch, "int4", INT4_GROUP, tiny_checkpoints, dequantized,
                              stock_model)


@pytest.mark.parametrize("arch", TESTED_ARCHITECTURES)
def test_group_wise_int8_engine_matches_stock_on_dequantized(arch, cpu_kernels, tiny_checkpoints, dequantized,
                                                             stock_model):
    """int8 with one fp16 scale per 32 inputs (GGUF Q8_0's layout)."""
    check_against_dequantized(arch, "int8", 32, tiny_checkpoints, dequantized, stock_model)
