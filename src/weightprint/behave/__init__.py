"""Black-box behaviour of models: backends that run a model (local GGUF, transformers, any
OpenAI-compatible URL) behind one interface, and the tests built on them."""
