"""Benchmarks: commands that print measured numbers (U-Net, pipeline, memory, CPU contention, the GPU
check); `python -m studio bench ...`."""
