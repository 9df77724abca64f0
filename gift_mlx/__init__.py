"""gift-mlx: GIFT (instruct-guided, confidence-weighted LoRA transfer) on MLX."""

from . import blas

blas.preload()  # must run before anything imports mlx.core

__version__ = "0.1.0"
