"""The runtime: everything that runs a model with experts split between CPU and fast device.

Model facts (`config`, `adapters`), checkpoint checks and loading (`loading`), tiny seeded
checkpoints (`tiny`), expert residency and transfers (`experts`), CPU kernels
(`kernels`), expert formats and their math (`quant`, `storage`, `quantize_load`, `quantizer`,
`dequantized`), the memory report (`memory`), placement and execution
policies (`placement`, `execution`, `registry`, `policies`), the latency model and the pure
assignment (`latency`), the experts forward (`orchestrate`), the `Engine` and its builders
(`engine`, `factory`), routing counts (`popularity`, `calibrate`), statistics, clocks and traces
(`stats`, `timing`, `trace`), and the errors users see (`errors`).

May import: nothing else of fiddler_nb (it is the bottom layer).
"""
