"""CPU kernels for expert matrices: the registry of kernels per stored format, the kernel choice
per format and token bucket, and torch's own kernels (`registry`). Compiled kernels with ISA
dispatch go here, one module per backend, registered beside torch's.

May import: base, model, formats.
"""
