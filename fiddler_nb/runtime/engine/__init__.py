"""The engine itself: `Engine` (`engine`), building one from a checkpoint or a model in memory
(`factory`, `loading`), the experts forward that runs one layer's assignment (`orchestrate`),
where each expert's weights live (`experts`: the ExpertStore), the memory report (`memory`),
routing counts from a prompt set (`calibrate`), what a checkpoint is and what fits
(`model_facts`: fnb.inspect), and dequantized reference checkpoints (`dequantized`). Checkpoints
loaded as they are: which loader a path needs (`sources`), GGUF files (`gguf_load`), MXFP4
gpt-oss safetensors (`mxfp4_load`), both filling a meta-device model tensor by tensor
(`skeleton`).

May import: base, model, formats, kernels, policies, generation.
"""
