"""Reading and writing model files: GGUF, safetensors, Hugging Face directories."""

from weightprint.io.gguf_file import GGUFModel, StringArray, copy_metadata_for_write
from weightprint.io.gguf_writer import TensorSpec, write_gguf
from weightprint.io.geometry import Geometry
from weightprint.io.hashing import file_sha256, model_sha256
from weightprint.io.hf import HFModel, write_hf_dir
from weightprint.io.model import Model, TensorInfo, TokenizerInfo, dequantize_raw
from weightprint.io.names import (
    EMBED_NAME,
    EMBED_NAMES,
    FINAL_NORM_NAME,
    FINAL_NORM_NAMES,
    HEAD_NAME,
    HEAD_NAMES,
    from_stored_layout,
    gguf_to_hf_name,
    hf_to_gguf_name,
    layer_of,
    permute_qk,
    split_layer,
    to_stored_layout,
    unpermute_qk,
)
from weightprint.io.open import open_model
from weightprint.io.safetensors_file import SafetensorsModel, write_safetensors_shards

__all__ = [
    "EMBED_NAME",
    "EMBED_NAMES",
    "FINAL_NORM_NAME",
    "FINAL_NORM_NAMES",
    "GGUFModel",
    "Geometry",
    "HEAD_NAME",
    "HEAD_NAMES",
    "HFModel",
    "SafetensorsModel",
    "Model",
    "StringArray",
    "TensorInfo",
    "TensorSpec",
    "TokenizerInfo",
    "copy_metadata_for_write",
    "dequantize_raw",
    "file_sha256",
    "from_stored_layout",
    "gguf_to_hf_name",
    "hf_to_gguf_name",
    "layer_of",
    "model_sha256",
    "open_model",
    "permute_qk",
    "split_layer",
    "to_stored_layout",
    "unpermute_qk",
    "write_gguf",
    "write_hf_dir",
    "write_safetensors_shards",
]
