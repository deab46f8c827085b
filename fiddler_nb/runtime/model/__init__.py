"""What a checkpoint is: per-architecture facts discovered from the transformers model
(`adapters`: MoE layers, experts modules, their layout), the engine's settings and the dtype and
device names users pass (`config`), seeded tiny checkpoints built locally (`tiny`), GGUF files'
headers, tensor tables and config (`gguf_file`) and seeded tiny GGUF files (`tiny_gguf`).

May import: base.
"""
