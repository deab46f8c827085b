"""The engine itself: `Engine` (`engine`), building one from a checkpoint or a model in memory
(`factory`, `loading`), the experts forward that runs one layer's assignment (`orchestrate`),
where each expert's weights live (`experts`: the ExpertStore), the memory report (`memory`),
routing counts from a prompt set (`calibrate`), what a checkpoint is and what fits
(`model_facts`: fnb.inspect), and dequantized reference checkpoints (`dequantized`).

May import: base, model, formats, kernels, policies, generation.
"""
