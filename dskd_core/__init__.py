"""dskd_core: the distillation engine (Dual-Space KD and baselines) — pure PyTorch / transformers / accelerate."""

__version__ = "0.1.0"
