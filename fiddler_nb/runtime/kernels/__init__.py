"""CPU kernels for expert matrices: the registry of kernels per stored format, the kernel choice
per format and token bucket, and torch's own kernels (`registry`); the package's compiled kernels
with run-time ISA dispatch (`native`, built by `native_build` from csrc/), registered beside
torch's.

May import: base, model, formats.
"""

from . import native  # noqa: F401  (registers the native kernels)
