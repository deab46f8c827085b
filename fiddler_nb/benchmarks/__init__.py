"""Benchmarks: measured side-by-side comparisons (the Python package; the shell script that
runs them on a lent GPU machine is scripts/gpu_check.sh at the repository root).

The strategy x budget x prompt matrix (`matrix`), Hugging Face accelerate's real offloading as
the naive baseline (`naive`), the CPU suite that runs on every machine (`cpu_suite`), the compressed-experts targets
table (`format_suite`) and per-format memory / speed / error (`format_compare`), random
checkpoints of real model shapes (`random_checkpoint`) and the self-contained HTML report
(`report`).

May import: runtime, measure, api. Never notebook or cli.
"""
