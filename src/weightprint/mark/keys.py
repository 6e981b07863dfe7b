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

import errno
import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from weightprint.io.limits import file_kind
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


class KeyFileExists(RegistryError):
    """The key file path is taken (by a key file or anything else); nothing was written."""


_MAX_KEY_FILE_BYTES = 4096


@dataclass(frozen=True)
class CreatedKey:
    """A key file this process created: the key, and the identity of the file it wrote."""

    master: MasterKey
    path: Path
    device: int
    inode: int

    def remove_if_unchanged(self) -> bool:
        """Delete the key file only if it is still the file this process created, holding this secret.

        Returns whether it was removed. A file replaced or rewritten since (another process, a
        user) is never touched.
        """
        try:
            st = os.stat(self.path, follow_symlinks=False)
            if (st.st_dev, st.st_ino) != (self.device, self.inode):
                return False
            if load_key_file(self.path).fingerprint() != self.master.fingerprint():
                return False
            self.path.unlink()
        except (OSError, RegistryError):
            return False
        return True


def create_key_file(path: str | Path, *, overwrite: bool = False) -> MasterKey:
    """Create a key file with a fresh master secret, mode 0600, written atomically.

    Raises
    ------
    RegistryError
        When the file exists (:class:`KeyFileExists`, unless ``overwrite``) or cannot be written.
    """
    return create_key_file_exclusive(path, overwrite=overwrite).master


def create_key_file_exclusive(path: str | Path, *, overwrite: bool = False) -> CreatedKey:
    """Create a key file, never replacing one: the complete file appears at ``path`` in one step.

    The secret is written and synced to a private temporary file, then hard-linked to ``path``:
    ``link`` fails when ``path`` exists, so of several processes creating the same key file
    exactly one succeeds and the others get :class:`KeyFileExists` (and can load the winner's
    key); no reader ever sees a partial file. Where the file system has no hard links the file
    is created in place with ``O_EXCL`` (still never replacing). ``overwrite`` replaces
    deliberately (``os.replace``).
    """
    path = Path(path)
    secret = secrets.token_bytes(MASTER_BYTES)
    body = f"{_HEADER}\n{secret.hex()}\n".encode("ascii")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        _write_new(tmp, body)
        try:
            if overwrite:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise _exists(path) from None
                except OSError as e:
                    if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                        raise
                    try:
                        _write_new(path, body)  # no hard links here: O_EXCL in place
                    except FileExistsError:
                        raise _exists(path) from None
            st = os.stat(path, follow_symlinks=False)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)
    except OSError as e:
        raise RegistryError(f"cannot write key file {path}: {e.strerror or e}") from e
    return CreatedKey(MasterKey(secret), path, st.st_dev, st.st_ino)


def _exists(path: Path) -> KeyFileExists:
    return KeyFileExists(f"key file {path} already exists; refusing to overwrite a master secret",
                         hint="pass another --key-file, or reuse this one")


def _write_new(path: Path, body: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_key_file(path: str | Path | None) -> MasterKey:
    """Read a master key file; it must be a regular file, 0600 (no group/other access) and well-formed.

    The file is opened without blocking and checked with ``fstat`` before it is read: a FIFO,
    directory or device is refused in one line (never a hang).
    """
    if path is None:
        raise RegistryError("no key file given; tracing and issuing need the master key file",
                            hint="pass --key-file (created by `weightprint mark init`)")
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError as e:
        raise RegistryError(f"key file {path} not found", hint="pass the key file created by `weightprint mark init`") from e
    except OSError as e:
        raise RegistryError(f"cannot read key file {path}: {e.strerror or e}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RegistryError(f"key file {path} is not a regular file ({file_kind(st.st_mode)})",
                                hint="pass the key file created by `weightprint mark init`")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise RegistryError(
                f"key file {path} has permissions {stat.S_IMODE(st.st_mode):04o}, expected 0600",
                hint=f"chmod 600 {path}",
            )
        if st.st_size > _MAX_KEY_FILE_BYTES:
            raise RegistryError(f"key file {path} is not a weightprint key file ({st.st_size} bytes)")
        data = os.read(fd, _MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise RegistryError(f"cannot read key file {path}: {e.strerror or e}") from e
    finally:
        os.close(fd)
    try:
        lines = data.decode("ascii").split()
    except UnicodeDecodeError as e:
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
