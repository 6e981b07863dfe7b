"""The master secret and the per-copy keys derived from it.

The master secret is 32 random bytes kept in a key file readable by its owner only
(mode 0600). Each issued copy gets its own 32-byte key::

    key = HKDF-SHA256(ikm=master, salt=copy_salt, info=b"weightprint-mark-v1|" + issue_id)

where ``copy_salt`` (16 random bytes) and ``issue_id`` are public and stored in the registry.
The *code key* (the Tardos biases shared by every copy of a registry) is
``HKDF-SHA256(ikm=master, salt="", info=b"weightprint-tardos-bias-v3")``.
Neither the master secret nor a derived key is ever written anywhere but the key file;
the registry holds a *fingerprint* of the master (an HMAC of a fixed label) so that a wrong
key file is detected before any test is run.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from weightprint.errors import RegistryError

MASTER_BYTES = 32
KEY_BYTES = 32
SALT_BYTES = 16
_HEADER = "weightprint-master-key-v1"
_INFO_PREFIX = b"weightprint-mark-v1|"
_CODE_INFO = b"weightprint-tardos-bias-v3"


class MasterKey:
    """The master secret. Its ``repr`` never shows the bytes."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) != MASTER_BYTES:
            raise RegistryError(f"master secret has {len(secret)} bytes, expected {MASTER_BYTES}")
        self._secret = bytes(secret)

    def __repr__(self) -> str:
        return "MasterKey(<hidden>)"

    def fingerprint(self) -> str:
        """A public 16-hex-digit check value (HMAC of a fixed label): identifies, never reveals."""
        return hmac.new(self._secret, b"weightprint-key-fingerprint", hashlib.sha256).hexdigest()[:16]

    def derive(self, salt: bytes, issue_id: str) -> "CopyKey":
        """The key of one issued copy (HKDF-SHA256 with the copy's public salt and issue id)."""
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=KEY_BYTES,
            salt=salt,
            info=_INFO_PREFIX + issue_id.encode("utf-8"),
        )
        return CopyKey(hkdf.derive(self._secret))

    def code_key(self) -> "CopyKey":
        """The key of the Tardos code's per-weight biases (the same for every copy of this master)."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_CODE_INFO)
        return CopyKey(hkdf.derive(self._secret))


class CopyKey:
    """A per-copy key (32 bytes) that seeds the copy's sign pattern. ``repr`` hides it."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise RegistryError(f"copy key has {len(key)} bytes, expected {KEY_BYTES}")
        self._key = bytes(key)

    def __repr__(self) -> str:
        return "CopyKey(<hidden>)"

    @classmethod
    def random(cls) -> "CopyKey":
        """A fresh random key (for calibration: a key that was never issued)."""
        return cls(secrets.token_bytes(KEY_BYTES))

    def tensor_seed(self, tensor_name: str) -> bytes:
        """32 bytes that seed the sign stream of one tensor (HMAC-SHA256 of its canonical name)."""
        return hmac.new(self._key, b"tensor|" + tensor_name.encode("utf-8"), hashlib.sha256).digest()


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def create_key_file(path: str | Path, *, overwrite: bool = False) -> MasterKey:
    """Create a key file with a fresh master secret, mode 0600, written atomically.

    Raises
    ------
    RegistryError
        When the file exists (and ``overwrite`` is false) or cannot be written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise RegistryError(
            f"key file {path} already exists; refusing to overwrite a master secret",
            hint="pass another --key-file, or reuse this one",
        )
    secret = secrets.token_bytes(MASTER_BYTES)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{_HEADER}\n{secret.hex()}\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RegistryError(f"cannot write key file {path}: {e.strerror}") from e
    return MasterKey(secret)


def load_key_file(path: str | Path | None) -> MasterKey:
    """Read a master key file; it must exist, be 0600 (no group/other access) and well-formed."""
    if path is None:
        raise RegistryError("no key file given; tracing and issuing need the master key file",
                            hint="pass --key-file (created by `weightprint mark init`)")
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise RegistryError(f"key file {path} not found", hint="pass the key file created by `weightprint mark init`") from e
    except OSError as e:
        raise RegistryError(f"cannot read key file {path}: {e.strerror}") from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise RegistryError(
            f"key file {path} has permissions {stat.S_IMODE(st.st_mode):04o}, expected 0600",
            hint=f"chmod 600 {path}",
        )
    try:
        lines = path.read_text("ascii").split()
    except (OSError, UnicodeDecodeError) as e:
        raise RegistryError(f"cannot read key file {path}: not a weightprint key file") from e
    if len(lines) != 2 or lines[0] != _HEADER:
        raise RegistryError(f"key file {path} is not a weightprint key file (bad header)")
    try:
        secret = bytes.fromhex(lines[1])
    except ValueError as e:
        raise RegistryError(f"key file {path} is corrupt (secret is not hex)") from e
    if len(secret) != MASTER_BYTES:
        raise RegistryError(f"key file {path} is corrupt (secret has {len(secret)} bytes, expected {MASTER_BYTES})")
    return MasterKey(secret)
