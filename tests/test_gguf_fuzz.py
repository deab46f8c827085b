"""Fuzz corrupt GGUF headers and tensor tables: every file either loads or is refused with one
`FiddlerError` line, never a raw traceback (derandomized, bounded: fast and reproducible).

Mutations hit the part of the file the reader parses (magic, version, counts, metadata keys and
values, tensor names, dims, types and offsets): single bytes, little-endian integers set to
extremes, deletions, and truncation anywhere in the file.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fiddler_nb as fnb

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
EXTREMES = (0, 1, 2**31 - 1, 2**32 - 1, 2**62, 2**64 - 1)
PROMPT = torch.tensor([[5, 17, 3]])  # ids: a file whose tokenizer metadata is corrupt still runs


class Original(tuple):
    """(file bytes, size of the parsed part): printed short in a failing example."""

    def __repr__(self) -> str:
        return f"<tiny Q4_0 mixtral GGUF: {len(self[0])} bytes, header {self[1]}>"


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> Original:
    """A tiny Q4_0 Mixtral file and the size of its parsed part (everything before the data)."""
    from gguf import GGUFReader

    path = fnb.make_tiny_gguf(tmp_path_factory.mktemp("fz") / "m.gguf", "mixtral", "Q4_0")
    return Original((path.read_bytes(), int(GGUFReader(path).data_offset)))


mutation = st.one_of(
    st.tuples(st.just("byte"), st.floats(0, 1), st.integers(0, 255)),
    st.tuples(st.just("int"), st.floats(0, 1), st.sampled_from(EXTREMES), st.sampled_from((4, 8))),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
)


def mutate(data: bytes, header: int, m) -> bytes:
    kind, where = m[0], m[1]
    at = int(where * (header - 1)) if kind != "truncate" else int(where * (len(data) - 1))
    if kind == "byte":
        return data[:at] + bytes([m[2]]) + data[at + 1:]
    if kind == "int":
        value = m[2] & ((1 << 8 * m[3]) - 1)  # the extreme that fits the field's width
        return data[:at] + value.to_bytes(m[3], "little") + data[at + m[3]:]
    if kind == "delete":
        return data[:at] + data[at + m[2]:]
    return data[:at]


@settings(FUZZ)
@given(mutations=st.lists(mutation, min_size=1, max_size=3))
def test_corrupt_gguf_is_one_line_or_loads(gguf_bytes, tmp_path, mutations):
    data, header = gguf_bytes
    for m in mutations:
        data = mutate(data, header, m)
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(data)
    try:
        engine = fnb.load(path, device="cpu", execution="cpu")
    except fnb.FiddlerError as err:
        message = str(err)
        assert message and "\n" not in message, f"not one line: {message!r}"
        return
    engine.generate(PROMPT, max_new_tokens=2)  # a file that loads also runs
    engine.close()


@pytest.fixture(scope="module")
def number_fields(gguf_bytes, tmp_path_factory) -> dict[str, tuple[int, int]]:
    """Metadata key -> (byte offset, width) of every scalar integer value in the file."""
    from gguf import GGUFReader

    path = tmp_path_factory.mktemp("fields") / "m.gguf"
    path.write_bytes(gguf_bytes[0])
    out = {}
    for name, field in GGUFReader(path).fields.items():
        value = field.parts[-1]
        if len(field.parts) == 4 and value.dtype.kind in "iu" and value.size == 1:  # len, key, type, value
            offset = field.offset + sum(p.nbytes for p in field.parts[:-1])
            out[name] = (offset, value.nbytes)
    return out


@settings(FUZZ, max_examples=40)
@given(choice=st.data(), value=st.sampled_from(EXTREMES + (2, 3, 7, 9, 255, 65535)))
def test_extreme_metadata_numbers_are_one_line_or_load(gguf_bytes, number_fields, tmp_path,
                                                       choice, value):
    """Layer, head, expert and vocabulary counts set to 0, 1, huge, ...: refused or run."""
    key = choice.draw(st.sampled_from(sorted(number_fields)))
    offset, width = number_fields[key]
    data = gguf_bytes[0]
    data = data[:offset] + (value & ((1 << 8 * width) - 1)).to_bytes(width, "little") + \
        data[offset + width:]
    path = tmp_path / "numbers.gguf"
    path.write_bytes(data)
    try:
        engine = fnb.load(path, device="cpu", execution="cpu")
    except fnb.FiddlerError as err:
        assert "\n" not in str(err), f"{key}={value}: not one line: {err!r}"
        return
    engine.generate(PROMPT, max_new_tokens=2)
    engine.close()
