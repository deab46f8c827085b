"""Measurements: facts about this machine and projections for others.

The measurement discipline every timed number follows -- warm-up, repeats until the spread is
small or a time budget is spent, median and interquartile range, the machine's load before and
after (`discipline`) -- and ranking measured candidates with confidence (`compare`).
Machine facts and presets for GPUs we cannot measure (`hardware`), model shapes for models that
are not loaded (`shapes`: ModelShape and its presets), timing probes (`probes`), the
measured choice of CPU kernel per expert format and of threads (`kernel_choice`),
the profiler that turns them into a saved `HardwareProfile` (`profiler`), and the planner that
projects tokens/s per strategy and budget from a profile (`planner`; every number labelled
projected).

May import: runtime (its kernels and latency model). Never benchmarks, notebook or cli.
"""
