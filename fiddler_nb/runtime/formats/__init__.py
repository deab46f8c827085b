"""How routed experts' weights are stored: formats and their quantization math (`quant`, pure
functions), one stored matrix (`matrix`), how an experts module holds a format (`storage`:
tensor names, per-expert views), quantizing while transformers reads the checkpoint
(`quantizer`) and converting a loaded model (`quantize_load`). Checkpoint formats kept as they
are: GGUF block types mapped onto ours (`gguf_blocks`), MXFP4 (`mxfp4`) and writing tiny MXFP4
gpt-oss checkpoints (`mxfp4_checkpoint`).

May import: base, model.
"""
