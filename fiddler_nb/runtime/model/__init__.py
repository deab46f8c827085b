"""What a checkpoint is: per-architecture facts discovered from the transformers model
(`adapters`: MoE layers, experts modules, their layout), the engine's settings and the dtype and
device names users pass (`config`), and seeded tiny checkpoints built locally (`tiny`).

May import: base.
"""
