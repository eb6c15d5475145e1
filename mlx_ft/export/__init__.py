"""`export`: a run (or model) out of mlx_ft: a fused Hugging Face folder (`hf`); GGUF for llama.cpp/Ollama to follow."""
