"""CPU kernels for expert matrices: the registry of kernels per stored format, the kernel choice
per format and token bucket, and torch's own kernels (`registry`); the package's compiled kernels
with run-time ISA dispatch (`native`, built by `native_build` from csrc/), registered beside
torch's; `torch_mxfp4` is the MXFP4 kernel (decode a chunk of rows, then GEMM).

May import: base, model, formats.
"""

from . import native  # noqa: F401  (registers the native kernels)
from . import torch_mxfp4  # noqa: F401  (registers the 'mxfp4' kernel)
