"""The flow-token secret: read it from a private key file, or create one (security by default).

RFC 5626 §5.2 has the edge proxy pick a random key at start-up. Keeping it in a file instead
lets tokens already stored in Paths survive a restart, so the file must be as private as the
key: anyone who reads it can forge tokens and steer requests onto other users' flows.

Invariants:
- a key file is 64 hex characters (32 octets) plus optional whitespace, mode 0600 or stricter;
  one readable by group or others is refused rather than silently used;
- a new file appears at its final name only once complete (written to a private temporary file
  and then linked into place), and never replaces a file another process created meanwhile;
- errors are ``KeyFileError``, naming the file and the problem but never the key material.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import secrets
import stat

__all__ = ["KEY_BYTES", "MIN_SECRET_BYTES", "KeyFileError", "load_or_create_key", "parse_secret"]

KEY_BYTES = 32
MIN_SECRET_BYTES = 16
_MAX_FILE_BYTES = 4096  # a key file is ~65 bytes; refuse to slurp something else by mistake
# Strict: bytes.fromhex() alone would also accept spaces between the pairs.
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")


class KeyFileError(Exception):
    """The secret key file or configured secret is unusable; the message says why."""


def _parse_key_text(path: pathlib.Path, data: bytes) -> bytes:
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise KeyFileError(f"key file {path} is not ASCII hex text") from None
    if len(text) != 2 * KEY_BYTES:
        raise KeyFileError(
            f"key file {path} must hold exactly {2 * KEY_BYTES} hex characters "
            f"({KEY_BYTES} bytes), found {len(text)} characters"
        )
    if _HEX_RE.fullmatch(text) is None:
        raise KeyFileError(f"key file {path} contains characters that are not hex")
    return bytes.fromhex(text)


def _read_key(path: pathlib.Path) -> bytes:
    """Read and check an existing key file; FileNotFoundError if there is none."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)  # O_NONBLOCK: a FIFO at this path must not hang start-up
    try:
        # fstat on the open descriptor, so the file checked is the file read.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        if os.name == "posix" and st.st_mode & 0o077:
            raise KeyFileError(
                f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}, which lets group or "
                f"others read it; run `chmod 600 {path}` (or delete it to create a new key)"
            )
        data = os.read(fd, _MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE_BYTES:
        raise KeyFileError(f"key file {path} is too large to be a key file")
    return _parse_key_text(path, data)


def _fsync_dir(directory: pathlib.Path) -> None:
    """Make the new directory entry durable too (best effort: not every OS allows this)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_new(path: pathlib.Path, content: bytes) -> None:
    """Create ``path`` (mode 0600, FileExistsError if present), write and flush ``content``."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def _create_key(path: pathlib.Path) -> bytes:
    """Write a fresh key to ``path``; FileExistsError if another process created it first."""
    key = secrets.token_bytes(KEY_BYTES)
    content = key.hex().encode("ascii") + b"\n"
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    _write_new(tmp, content)
    try:
        # link() fails if the name exists, so a key another process just created is never
        # replaced: both processes end up using the same key.
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        # No hard links on this file system: create the final name directly (still O_EXCL,
        # only a crash mid-write could leave a short file, which the next start reports).
        _write_new(path, content)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return key


def load_or_create_key(path: pathlib.Path) -> bytes:
    """The 32-byte flow-token key stored at ``path``, creating the file (mode 0600) if missing.

    Raises KeyFileError if the file is readable by group/others, malformed, or cannot be read
    or written.
    """
    path = pathlib.Path(path)
    for _ in range(2):
        try:
            return _read_key(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise KeyFileError(
                f"cannot create key file {path}: directory {path.parent}: {exc.strerror}"
            ) from None
        try:
            return _create_key(path)
        except FileExistsError:
            continue  # lost a creation race: read the winner's key
        except OSError as exc:
            raise KeyFileError(f"cannot create key file {path}: {exc.strerror}") from None
    raise KeyFileError(f"key file {path} keeps disappearing while being read")


def parse_secret(text: str) -> bytes:
    """Key bytes from a secret given in configuration.

    Even-length hex of at least 32 characters is decoded (so a key copied from a key file means
    the same key); any other string of at least 16 characters is used as its UTF-8 bytes.
    Leading and trailing whitespace is ignored.
    """
    if not isinstance(text, str):
        raise KeyFileError("the flow-token secret must be a string")
    text = text.strip()
    if len(text) >= 2 * MIN_SECRET_BYTES and len(text) % 2 == 0 and _HEX_RE.fullmatch(text):
        return bytes.fromhex(text)
    if len(text) >= MIN_SECRET_BYTES:
        return text.encode("utf-8", "surrogatepass")
    raise KeyFileError(
        f"the flow-token secret is too short: use at least {2 * MIN_SECRET_BYTES} hex "
        f"characters or a passphrase of at least {MIN_SECRET_BYTES} characters"
    )
