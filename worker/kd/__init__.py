"""The distillation engine: pure PyTorch, usable as a library.

Kept free of imports here so that the API can read `worker.kd.spec` without loading torch.
Entry points: `worker.kd.engine.prepare` and `worker.kd.engine.distill`. The layout:
docs/ARCHITECTURE-engine.md.
"""
