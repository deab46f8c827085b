"""Kept for old commands: the llama.cpp side by side now lives in the package.

    fiddler-nb bench --cpu-suite --model CKPT --llama-bench PATH/llama-bench \
        --gguf bf16=CKPT-bf16.gguf --gguf int8=CKPT-q8_0.gguf --gguf int4=CKPT-q4_0.gguf \
        [--gguf-direct] [--allow-activation-quant] [--suite-repeats 3] [--new-tokens 32]

(fiddler_nb/benchmarks/llama_compare.py). This script passes its arguments through:
`python scripts/llama_side_by_side.py --checkpoint CKPT --llama-bench PATH --gguf ...`.
"""

from __future__ import annotations

import sys

from fiddler_nb.cli.main import main

if __name__ == "__main__":
    args = ["--model" if a == "--checkpoint" else "--suite-repeats" if a == "--rounds" else a
            for a in sys.argv[1:]]
    sys.exit(main(["bench", "--cpu-suite", *args]))
