"""How routed experts' weights are stored: formats and their quantization math (`quant`, pure
functions), one stored matrix (`matrix`), how an experts module holds a format (`storage`:
tensor names, per-expert views), quantizing while transformers reads the checkpoint
(`quantizer`) and converting a loaded model (`quantize_load`).

May import: base, model.
"""
