"""mlx_ft: fine-tune a small chat model with MLX, serve it, export it to GGUF."""

from mlx_ft.system.blas import use_fast_blas as _use_fast_blas

__version__ = "0.1.0"

# Must run before anything imports mlx.core: see mlx_ft/system/blas.py.
_use_fast_blas()
