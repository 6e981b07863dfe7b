"""Limits for untrusted model inputs: caps, bounded JSON, input and output path checks.

Every model file, directory and JSON document is read as if an attacker wrote it. The numbers
in a file never drive an allocation larger than the file itself allows (times a small constant)
and never exceed the caps below; every violation is one :class:`~weightprint.errors.ModelFormatError`
line naming the file and the key or field.

Caps (each far above any real checkpoint):

- :data:`MAX_ALIGNMENT` ``2**16`` bytes for ``general.alignment`` (llama.cpp writes 32);
- :data:`MAX_STRING_ITEMS` ``2**20`` strings in all GGUF string arrays together (Gemma 3's
  vocabulary is 262,144 tokens, Llama 3's merges 280,147);
- :data:`MAX_NESTED_ITEMS` ``2**16`` arrays inside arrays in a GGUF (llama.cpp rejects nested
  arrays outright), nested at most :data:`MAX_ARRAY_NESTING` deep;
- JSON documents: :data:`JSON_MAX_BYTES` per kind of file, at most :data:`JSON_MAX_CONTAINERS`
  arrays/objects and :data:`JSON_MAX_VALUES` values, nesting up to the interpreter's recursion
  limit (a deeper document is refused, not crashed on).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from weightprint.errors import ModelFormatError, WeightprintError

__all__ = [
    "MAX_ALIGNMENT",
    "MAX_STRING_ITEMS",
    "MAX_NESTED_ITEMS",
    "MAX_ARRAY_NESTING",
    "JSON_MAX_BYTES",
    "JSON_MAX_CONTAINERS",
    "JSON_MAX_VALUES",
    "check_json_budget",
    "shape_fits",
    "one_line",
    "tidy_error",
    "io_boundary",
    "loads_json",
    "read_json",
    "check_json_file",
    "regular_file",
    "stat_input",
    "file_kind",
    "pid_alive",
    "confined_name",
    "check_output_path",
    "clean_stale_temporaries",
]

MAX_ALIGNMENT = 1 << 16
MAX_ELEMENTS = 1 << 48  # a tensor's dimensions, zeros counted as 1, multiply to at most this (numpy needs < 2**63)
MAX_STRING_ITEMS = 1 << 20
MAX_NESTED_ITEMS = 1 << 16
MAX_ARRAY_NESTING = 4

# Per file name; anything else gets the default. Real files: config.json < 100 kB, Gemma 3's
# tokenizer.json 33 MB, DeepSeek-V3's index 9 MB.
JSON_MAX_BYTES: dict[str, int] = {
    "config.json": 4 << 20,
    "generation_config.json": 1 << 20,
    "tokenizer_config.json": 32 << 20,
    "special_tokens_map.json": 4 << 20,
    "added_tokens.json": 16 << 20,
    "model.safetensors.index.json": 64 << 20,
    "tokenizer.json": 128 << 20,
}
JSON_DEFAULT_MAX_BYTES = 16 << 20
JSON_MAX_CONTAINERS = 1 << 21
JSON_MAX_VALUES = 1 << 23
# configs hold a few dozen arrays/objects; a million of them is an attack on memory
JSON_MAX_CONTAINERS_BY_NAME: dict[str, int] = {"config.json": 1 << 16, "generation_config.json": 1 << 12}


def shape_fits(shape: Iterable[int]) -> bool:
    """Whether the dimensions, with zeros counted as 1, multiply to at most :data:`MAX_ELEMENTS`.

    A zero dimension makes a tensor empty whatever the others say, so byte-size checks pass it;
    numpy still refuses to build an array with a dimension of 2**63 (``ValueError``).
    """
    n = 1
    for d in shape:
        n *= max(int(d), 1)
        if n > MAX_ELEMENTS:
            return False
    return True


def check_json_budget(raw: bytes, label: str, *, max_containers: int = JSON_MAX_CONTAINERS,
                      max_values: int = JSON_MAX_VALUES) -> None:
    """Refuse a JSON text whose parse would build too many objects (counted in C, before parsing).

    ``[`` and ``{`` bound the number of arrays/objects and ``,`` plus those bound the number of
    values (brackets and commas inside strings only make the bound looser).
    """
    containers = raw.count(b"[") + raw.count(b"{")
    if containers > max_containers:
        raise ModelFormatError(f"{label}: more than {max_containers:,} JSON arrays/objects ({containers:,} brackets)")
    values = containers + raw.count(b",")
    if values > max_values:
        raise ModelFormatError(f"{label}: more than {max_values:,} JSON values")


def loads_json(raw: bytes, label: str, *, object_pairs_hook: Any = None) -> Any:
    """Parse UTF-8 JSON bytes; every failure is one :class:`ModelFormatError` line naming ``label``."""
    check_json_budget(raw, label)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelFormatError(f"{label}: not UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{label}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise ModelFormatError(f"{label}: JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer with more digits than int() accepts
        raise ModelFormatError(f"{label}: not valid JSON ({str(e).splitlines()[0]})") from None


def check_json_file(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> bytes:
    """The bytes of a JSON file that passed every limit :func:`read_json` applies before parsing
    (regular file, size, UTF-8, bracket/value counts); for readers that parse it themselves."""
    p = Path(path)
    cap = max_bytes if max_bytes is not None else JSON_MAX_BYTES.get(p.name, JSON_DEFAULT_MAX_BYTES)
    size = regular_file(p, "JSON file").st_size
    if size > cap:
        raise ModelFormatError(f"{p}: {size:,} bytes, more than the {cap:,} allowed for this file")
    try:
        with open(p, "rb") as f:
            raw = f.read(cap + 1)
    except OSError as e:
        raise ModelFormatError(f"{p}: cannot read ({e.strerror or e})") from None
    if len(raw) > cap:
        raise ModelFormatError(f"{p}: more than the {cap:,} bytes allowed for this file")
    check_json_budget(raw, str(p), max_containers=JSON_MAX_CONTAINERS_BY_NAME.get(p.name, JSON_MAX_CONTAINERS))
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelFormatError(f"{p}: not UTF-8 (byte {e.start})") from None
    return raw


def read_json(path: str | os.PathLike[str], *, max_bytes: int | None = None, expect: type | None = dict) -> Any:
    """Read a JSON file of a model directory within size, count and depth limits.

    Parameters
    ----------
    path : str or Path
        The file (must be a regular file; symlinks are followed).
    max_bytes : int, optional
        Size cap; by default :data:`JSON_MAX_BYTES` for its file name.
    expect : type or None, *optional*, defaults to dict
        The JSON type of the top-level value (``dict`` for an object); None accepts any.

    Raises
    ------
    ModelFormatError
        Not a regular file, too large, not UTF-8, not JSON, too many values, nested too deeply,
        or of the wrong top-level type; the message names the file.
    """
    p = Path(path)
    raw = check_json_file(p, max_bytes=max_bytes)
    value = loads_json(raw, str(p))
    if expect is not None and not isinstance(value, expect):
        want = {dict: "an object", list: "an array", str: "a string"}.get(expect, expect.__name__)
        raise ModelFormatError(f"{p}: top-level JSON value is {json_type(value)}, expected {want}")
    return value


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (``an object``, ``a string``...), for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_CONTROL = {c: f"\\x{c:02x}" for c in list(range(32)) + [127]}
MAX_MESSAGE_CHARS = 600


def one_line(message: str) -> str:
    """``message`` with control characters escaped and its length capped, so that a name taken
    from a file (a tensor name with a newline, a 50 MB key) cannot break the one-line error."""
    text = message.translate(_CONTROL)
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 20] + f"... [{len(text):,} chars]"
    return text


def tidy_error(e: WeightprintError) -> WeightprintError:
    """Make ``e``'s message one bounded line in place (see :func:`one_line`); returns ``e``."""
    msg = one_line(e.message)
    if msg != e.message:
        e.message = msg
        e.args = (msg,)
    return e


@contextmanager
def io_boundary(label: str | os.PathLike[str]) -> Iterator[None]:
    """Around work on an untrusted model: every error leaves as one bounded line naming ``label``.

    A :class:`WeightprintError` gets its message tidied (:func:`one_line`); a ``RecursionError``
    or ``UnicodeDecodeError`` that no parser check caught becomes a :class:`ModelFormatError`.
    """
    try:
        yield
    except WeightprintError as e:
        raise tidy_error(e)
    except (RecursionError, UnicodeDecodeError) as e:
        raise ModelFormatError(one_line(f"{label}: malformed model ({type(e).__name__}: {e})")) from e


# --------------------------------------------------------------------------- inputs


def stat_input(path: str | os.PathLike[str]) -> os.stat_result:
    """``os.stat`` of an input path (symlinks followed), every failure one :class:`ModelFormatError`
    line: a dangling symlink names its target, a missing path says so."""
    p = Path(path)
    try:
        return os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise ModelFormatError(f"{p}: dangling symbolic link (target {os.readlink(p)!r} does not exist)") from None
        raise ModelFormatError(f"{p}: no such file or directory") from None
    except OSError as e:
        raise ModelFormatError(f"{p}: cannot access ({e.strerror or e})") from None


def regular_file(path: str | os.PathLike[str], what: str = "model file") -> os.stat_result:
    """``os.stat`` of ``path``, refusing anything but an existing regular file (symlinks followed).

    Checked before any ``open``: a FIFO or a terminal would block the reader forever, a device
    would be read without end.

    Raises
    ------
    ModelFormatError
        Missing (a dangling symlink says so), unreadable, or not a regular file.
    """
    p = Path(path)
    st = stat_input(p)
    if not stat.S_ISREG(st.st_mode):
        raise ModelFormatError(f"{p}: not a regular file ({file_kind(st.st_mode)}), expected a {what}")
    return st


def file_kind(mode: int) -> str:
    """``a directory``, ``a FIFO``, ``a character device``... for an ``st_mode``, in messages."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def confined_name(directory: str | os.PathLike[str], name: Any, label: str) -> Path:
    """``directory / name`` for a file name taken from an untrusted listing (an index's shard names).

    The name must be a plain, non-empty file name (no separator, no ``..``, not absolute, no NUL)
    and, with symlinks resolved, must stay inside ``directory``. Nothing is opened.

    Raises
    ------
    ModelFormatError
        The name is not a string or escapes the directory; the message names ``label``.
    """
    if not isinstance(name, str):
        raise ModelFormatError(f"{label}: shard name is {json_type(name)}, expected a file name")
    shown = name if len(name) <= 80 else name[:77] + "..."
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or os.path.isabs(name) or os.sep in name or (os.altsep and os.altsep in name)):
        raise ModelFormatError(f"{label}: shard name {shown!r} is not a plain file name in the directory")
    d = Path(directory)
    target = d / name
    try:
        real_dir = d.resolve()
        real = target.resolve()
    except (OSError, RuntimeError) as e:  # symlink loop
        raise ModelFormatError(f"{label}: cannot resolve shard {shown!r} ({getattr(e, 'strerror', None) or e})") from None
    if real.parent != real_dir:
        raise ModelFormatError(f"{label}: shard {shown!r} is a link that leads out of {d}")
    return target


# --------------------------------------------------------------------------- outputs


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def check_output_path(out: str | os.PathLike[str], kind: str, inputs: Iterable[str | os.PathLike[str]] = ()) -> None:
    """Refuse an output that would replace something it must not.

    ``kind`` is ``"file"`` or ``"directory"``. An existing output must be of that kind (never a
    device, FIFO or socket: ``convert x.gguf /dev/null`` must not replace the device), must not
    be one of ``inputs`` (same inode: hard links and symlinks count) and, as a directory, must
    not hold one of them.

    Raises
    ------
    WeightprintError
        One line naming the output.
    """
    p = Path(out)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise WeightprintError(f"{p}: output is a dangling symbolic link", hint="remove it or choose another path") from None
        return
    except OSError as e:
        raise WeightprintError(f"{p}: cannot check the output path ({e.strerror or e})") from None
    want = stat.S_ISREG if kind == "file" else stat.S_ISDIR
    if not want(st.st_mode):
        what = "a regular file" if stat.S_ISREG(st.st_mode) else file_kind(st.st_mode)
        raise WeightprintError(f"{p}: output exists and is {what}, not a {kind}", hint="choose a new path")
    real_out = p.resolve()
    for src in inputs:
        try:
            sst = os.stat(src)
            real_src = Path(src).resolve()
        except (OSError, RuntimeError):
            continue
        if _same_file(st, sst):
            raise WeightprintError(f"{p}: output is the input {src}", hint="write to a new path")
        if kind == "directory" and real_out in real_src.parents:
            raise WeightprintError(f"{p}: output directory holds the input {src}", hint="write to a new path")


_TEMP_PID = re.compile(r"\.(\d+)\.[A-Za-z0-9_]+\.(?:tmp|old|build)")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still run (another user's process counts as alive)."""
    if pid <= 0:
        return True  # unknown: keep it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as e:
        return e.errno != errno.ESRCH
    return True


def clean_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove ``.NAME.<pid>.*.tmp`` temporaries of ``path`` left by processes that no longer run.

    The temporaries of :func:`weightprint.io.files.temp_file_beside` carry their creator's pid;
    one whose pid is alive (or belongs to another user) is kept. Returns what was removed.
    """
    import shutil

    p = Path(path)
    removed: list[Path] = []
    prefix = f".{p.name}."
    try:
        entries = list(os.scandir(p.parent if str(p.parent) else "."))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        m = _TEMP_PID.fullmatch(entry.name[len(p.name) + 1:])
        if m is None or pid_alive(int(m.group(1))):
            continue
        target = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(target)
            else:
                target.unlink()
            removed.append(target)
        except OSError:
            pass
    return removed


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    After a big transient structure (a million-token vocabulary's merge search) freed memory stays
    in the heap, and whatever is allocated next adds to it in the peak RSS.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
