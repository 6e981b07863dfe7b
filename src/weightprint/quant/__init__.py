"""Quantization kernels, one class per GGML type, registered in one table."""
