"""CPU kernels for expert matrices: the registry of kernels per stored format, the kernel choice
per format and token bucket, and torch's own kernels (`registry`). Compiled kernels with ISA
dispatch go here, one module per backend, registered beside torch's; `torch_mxfp4` is the MXFP4
kernel (decode a chunk of rows, then GEMM).

May import: base, model, formats.
"""

from . import torch_mxfp4  # noqa: F401  (registers the 'mxfp4' kernel)
