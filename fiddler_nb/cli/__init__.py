"""The `fiddler-nb` command line (`main`: generate and the parser; `measure`: profile and plan;
`bench`: the benchmark matrix, the CPU suite and the demo). Parsing stays here; library
functions receive plain values, never a Namespace.

May import: every layer (it is the top one).
"""

from .main import main

__all__ = ["main"]
