"""The runtime: everything that runs a model with experts split between CPU and fast device.

In parts, bottom to top (a part imports only the parts its own docstring names; base is the
three plain modules here):
  errors, validate, files  base: the errors users see, checks at the public boundary, JSON files
  model/       what a checkpoint is: adapters, the engine's config, tiny checkpoints
  formats/     how expert weights are stored: formats, quantization math, quantize-at-load
  kernels/     CPU kernels per stored format, behind a registry, and the kernel choice
  policies/    decisions: placement, execution, latency model + pure assignment, popularity
  generation/  workload, streaming, chat, stats, timing, traces, plan files
  engine/      Engine, factory, loading, orchestrate, ExpertStore, memory, calibrate, inspect

May import: nothing else of fiddler_nb (it is the bottom layer).
"""
