"""llama.cpp as a reference implementation, through llama-cpp-python (imported lazily).

The functions here run llama.cpp's own code (``libllama`` vendored by llama-cpp-python 0.3.36),
so that our pure-Python ports (:mod:`weightprint.quant.mixes`, the kernels) can be checked
against it. ``llama_model_quantize`` with ``llama_model_quantize_default_params()`` gives files
byte-identical to the ``llama-quantize`` tool.

llama.cpp's log lines go through a callback that collects them instead of printing them; the
last ones are put into the :class:`~weightprint.errors.BackendError` message when a call fails.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import threading
from pathlib import Path
from types import ModuleType

from weightprint.constants import FileType
from weightprint.errors import BackendError

_LOG_LOCK = threading.Lock()
_log_lines: list[str] = []
_log_callback = None  # keep the ctypes callback alive while llama.cpp holds it


def llama_available() -> bool:
    """Whether llama-cpp-python can be imported (without importing it).

    Returns
    -------
    bool
        True when the ``llama_cpp`` package is installed.
    """
    return importlib.util.find_spec("llama_cpp") is not None


def _import_llama_cpp() -> ModuleType:
    try:
        import llama_cpp
    except ImportError as e:
        raise BackendError(
            "llama-cpp-python (`llama_cpp`) is not installed",
            hint="pip install --no-deps ~/.cache/weightprint/wheels/llama_cpp_python-*.whl",
        ) from e
    return llama_cpp


def _install_collecting_logger(llama_cpp: ModuleType) -> None:
    """Route llama.cpp's log into ``_log_lines`` (once per process)."""
    global _log_callback
    if _log_callback is not None:
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        return

    @llama_cpp.llama_log_callback
    def _collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        _log_lines.append(text.decode("utf-8", errors="replace"))
        if len(_log_lines) > 4000:  # bound memory on long runs
            del _log_lines[:2000]

    _log_callback = _collect
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


def _restore_default_logger(llama_cpp: ModuleType) -> None:
    try:
        from llama_cpp import _logger
    except ImportError:  # pragma: no cover - layout of llama-cpp-python changed
        return
    llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def _last_error_line() -> str:
    text = "".join(_log_lines)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower() or "failed" in line.lower():
            # progress lines have no newline: keep only the failing call's own message
            start = line.rfind("llama_model_quantize:")
            return line[start:] if start >= 0 else line
    return lines[-1] if lines else "no log from llama.cpp"


def llama_quantize(
    src: str | Path,
    dst: str | Path,
    ftype: int | FileType,
    nthread: int = 2,
    allow_requantize: bool = True,
) -> Path:
    """Quantize a GGUF file with llama.cpp's own ``llama_model_quantize``.

    The per-tensor types follow llama.cpp's rules for ``ftype`` (see
    :func:`weightprint.quant.mixes.choose_tensor_types`). The output is written to a temporary
    file in the directory of ``dst`` and renamed into place.

    Parameters
    ----------
    src : `str | Path`
        Input GGUF file (any type llama.cpp can load: F32/F16/BF16 or quantized).
    dst : `str | Path`
        Output GGUF file; replaced if it exists.
    ftype : `int | FileType`
        llama.cpp ``llama_ftype`` number, e.g. ``FileType.Q4_K_M`` (15).
    nthread : `int`, *optional*, defaults to 2
        Worker threads; the output does not depend on it.
    allow_requantize : `bool`, *optional*, defaults to True
        Allow quantized source tensors (dequantized to F32, then quantized again).

    Returns
    -------
    Path
        ``dst``.

    Raises
    ------
    BackendError
        llama-cpp-python is missing, or llama.cpp failed (the message carries its last log line).
    FileNotFoundError
        ``src`` does not exist.

    Examples
    --------
    >>> llama_quantize("model-f16.gguf", "model-q4_k_m.gguf", FileType.Q4_K_M)  # doctest: +SKIP
    """
    src = Path(src)
    dst = Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"No such file: {src}")
    llama_cpp = _import_llama_cpp()
    ftype_value = int(ftype)
    ftype_name = FileType(ftype_value).name if ftype_value in FileType._value2member_map_ else str(ftype_value)

    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_value
    params.nthread = int(nthread)
    params.allow_requantize = bool(allow_requantize)
    with _LOG_LOCK:
        _log_lines.clear()
        _install_collecting_logger(llama_cpp)
        try:
            rc = llama_cpp.llama_model_quantize(
                str(src).encode("utf-8"), str(tmp).encode("utf-8"), ctypes.byref(params)
            )
        finally:
            _restore_default_logger(llama_cpp)
        if rc != 0:
            tmp.unlink(missing_ok=True)
            raise BackendError(
                f"llama.cpp could not quantize {src} to {ftype_name} (return code {rc}): {_last_error_line()}"
            )
    os.replace(tmp, dst)
    return dst
