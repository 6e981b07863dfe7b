"""Reading and writing model files: GGUF, safetensors, Hugging Face directories."""
