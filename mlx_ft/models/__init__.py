"""Models: where a model comes from and how it is loaded, below training, inference and export, which all use it.

- `sources`: a model source (HF repo id, folder, .gguf file, built-in alias) → a local HF-style folder; the cache
- `gguf_import`: a llama/qwen2/qwen3 GGUF file → an HF folder, without torch; `gguf_arch` and `gguf_tokenizer` are
  its tables (tensor names, architectures, pre-tokenizers), shared with the GGUF export
- `loader`: a run, adapter folder, fused or plain model → a model ready to answer
- `adapters`: LoRA/DoRA/full layers on a base (and the QLoRA quantization), as training built them
- `run_folder`: `Run`, the one reader of a run folder (config, metrics, adapter, best/, checkpoints, status)

The names below are the package's face: what the rest of mlx_ft uses of `sources`.
"""

from mlx_ft.models.sources import HOME_ENV, builtin_gguf, cache_home, fetch_from_wheel, resolve

__all__ = ["HOME_ENV", "builtin_gguf", "cache_home", "fetch_from_wheel", "resolve"]
