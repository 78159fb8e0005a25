"""Credential sources for digest authentication: users and their HA1 digests for one realm.

The credentials file is TOML::

    realm = "example.org"          # optional; when present it must match the configured realm
    [users.alice]
    ha1_md5 = "..."                # H(alice:example.org:password), RFC 7616 §3.4.2
    ha1_sha256 = "..."
    [users.bob]
    password = "..."               # clear text also accepted, hashed at load time

Invariants:
- Only HA1 hex digests are kept in memory; clear passwords are hashed at load and dropped.
- A user lacking the HA1 for an algorithm cannot authenticate with it (lookup returns None).
- Reprs and error messages name files, users and keys, never passwords or HA1 values.
- ``write_user`` never writes a clear password; it replaces the file atomically (temp file in the
  same directory, fsync, ``os.replace``); a new file is created 0600 and a rewritten file is
  never left world-readable.
- Every failure is reported as ``CredentialsError`` (a ``ValueError``).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from sipserver.auth.digest import ha1

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]

__all__ = ["CredentialStore", "CredentialsError", "passwd_entry", "write_user"]

PathArg = str | os.PathLike[str]


class CredentialsError(ValueError):
    """A credentials table or file is unusable; the message names the file/user and the problem."""


_KEYS = frozenset({"password", "ha1_md5", "ha1_sha256"})
_HEX_LEN = {"ha1_md5": 32, "ha1_sha256": 64}
_HEX = re.compile(r"[0-9a-fA-F]+")


@attrs.frozen
class _UserHA1:
    md5: str | None = attrs.field(repr=False)
    sha256: str | None = attrs.field(repr=False)


def _user_entry(realm: str, name: object, table: object) -> _UserHA1:
    if not isinstance(name, str) or not name:
        raise CredentialsError(f"user name {name!r} must be a non-empty string")
    if not isinstance(table, Mapping):
        raise CredentialsError(f"user {name!r}: expected a table of keys")
    for key, value in table.items():
        if key not in _KEYS:
            raise CredentialsError(
                f"user {name!r}: unknown key {key!r} (expected password, ha1_md5, ha1_sha256)"
            )
        if not isinstance(value, str) or not value:
            raise CredentialsError(f"user {name!r}: key {key!r} must be a non-empty string")
    if "password" in table:
        if "ha1_md5" in table or "ha1_sha256" in table:
            raise CredentialsError(
                f"user {name!r}: key 'password' cannot be combined with 'ha1_md5'/'ha1_sha256'"
            )
        password: str = table["password"]
        return _UserHA1(ha1(name, realm, password, "MD5"), ha1(name, realm, password, "SHA-256"))
    if "ha1_md5" not in table and "ha1_sha256" not in table:
        raise CredentialsError(f"user {name!r}: needs key 'password', 'ha1_md5' or 'ha1_sha256'")
    digests: dict[str, str | None] = {}
    for key, length in _HEX_LEN.items():
        value = table.get(key)
        if value is not None and (len(value) != length or not _HEX.fullmatch(value)):
            raise CredentialsError(f"user {name!r}: key {key!r} must be {length} hex digits")
        digests[key] = value.lower() if value is not None else None
    return _UserHA1(digests["ha1_md5"], digests["ha1_sha256"])


@attrs.frozen(repr=False)
class CredentialStore:
    """In-memory username -> HA1 per algorithm, for one realm (RFC 3261 §22.4)."""

    realm: str
    _users: Mapping[str, _UserHA1] = attrs.field(factory=dict)

    def __repr__(self) -> str:
        return f"CredentialStore(realm={self.realm!r}, users={len(self._users)})"

    @classmethod
    def from_users(cls, realm: str, users: Mapping[str, Mapping[str, str]]) -> CredentialStore:
        """Build from ``{name: {"password": ...} | {"ha1_md5": ..., "ha1_sha256": ...}}``.

        Raises ``CredentialsError`` (a ValueError) naming the user and key at fault.
        """
        if not isinstance(users, Mapping):
            raise CredentialsError("users must be a table of user tables")
        return cls(realm, {name: _user_entry(realm, name, t) for name, t in users.items()})

    @classmethod
    def load_file(cls, path: PathArg, realm: str) -> CredentialStore:
        """Load a TOML credentials file; raises ``CredentialsError`` naming the file."""
        raw = _read_bytes(Path(path))
        if raw is None:
            raise CredentialsError(f"{os.fspath(path)}: no such file")
        return _store_from_document(Path(path), _parse_toml(Path(path), raw), realm)

    def lookup(self, username: str, algorithm: str) -> str | None:
        """Stored HA1 hex for ``algorithm`` ("MD5" / "SHA-256"), None if unknown or absent.

        Fits ``DigestAuthenticator.verify``'s ``ha1_lookup``.
        """
        entry = self._users.get(username)
        if entry is None:
            return None
        algo = algorithm.upper()
        if algo == "MD5":
            return entry.md5
        if algo == "SHA-256":
            return entry.sha256
        return None

    def has_user(self, name: str) -> bool:
        return name in self._users

    def users(self) -> list[str]:
        return sorted(self._users)


def _read_bytes(path: Path) -> bytes | None:
    """File contents, or None if the file does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialsError(f"{path}: cannot read: {exc.strerror}") from None


def _parse_toml(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # The codec's message would quote file bytes, which may be a password.
        raise CredentialsError(f"{path}: not valid UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CredentialsError(f"{path}: invalid TOML: {exc}") from None


def _store_from_document(path: Path, data: Mapping[str, Any], realm: str) -> CredentialStore:
    extra = sorted(set(data) - {"realm", "users"})
    if extra:
        raise CredentialsError(f"{path}: unknown top-level key {extra[0]!r} (expected realm, users)")
    file_realm = data.get("realm")
    if file_realm is not None and file_realm != realm:
        raise CredentialsError(
            f"{path}: file is for realm {file_realm!r} but the configured realm is {realm!r}"
        )
    users = data.get("users", {})
    if not isinstance(users, Mapping):
        raise CredentialsError(f"{path}: 'users' must be a table")
    try:
        return CredentialStore.from_users(realm, users)
    except CredentialsError as exc:
        raise CredentialsError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------- writing

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_str(value: str) -> str:
    """TOML basic string: escape backslash, quote and every control character."""
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_str(key)


def _check_text(what: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise CredentialsError(f"{what} must be a non-empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CredentialsError(f"{what} is not valid Unicode text") from None
    return value


def passwd_entry(username: str, realm: str, password: str) -> str:
    """TOML table for one user holding ``ha1_md5`` and ``ha1_sha256`` (never the password)."""
    _check_text("username", username)
    _check_text("realm", realm)
    _check_text("password", password)
    return (
        f"[users.{_toml_key(username)}]\n"
        f'ha1_md5 = "{ha1(username, realm, password, "MD5")}"\n'
        f'ha1_sha256 = "{ha1(username, realm, password, "SHA-256")}"\n'
    )


def _render(data: Mapping[str, Any]) -> str:
    """Whole-file rendering, used when an in-place edit cannot be proven right."""
    lines = ["# sipserver credentials: HA1 digests per user (RFC 7616 §3.4.2)"]
    if "realm" in data:
        lines.append(f"realm = {_toml_str(data['realm'])}")
    for name, table in data.get("users", {}).items():
        lines.append("")
        lines.append(f"[users.{_toml_key(name)}]")
        lines.extend(f"{k} = {_toml_str(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def _is_user_header(line: str, username: str) -> bool:
    try:
        return tomllib.loads(line) == {"users": {username: {}}}
    except tomllib.TOMLDecodeError:
        return False


def _splice(text: str, username: str, entry: str) -> str:
    """Replace the ``[users.<username>]`` table in ``text`` with ``entry``, or append it.

    Keeps comments and other tables untouched. Comment/blank lines just before the next table
    belong to that table, so they are kept.
    """
    lines = text.splitlines(keepends=True)
    headers = [i for i, line in enumerate(lines) if line.lstrip().startswith("[")]
    for n, start in enumerate(headers):
        if not _is_user_header(lines[start].strip(), username):
            continue
        stop = headers[n + 1] if n + 1 < len(headers) else len(lines)
        while stop > start + 1 and (not lines[stop - 1].strip()
                                    or lines[stop - 1].lstrip().startswith("#")):
            stop -= 1
        return "".join(lines[:start]) + entry + "".join(lines[stop:])
    if text and not text.endswith("\n"):
        text += "\n"
    return text + ("\n" if text else "") + entry


def write_user(path: PathArg, username: str, realm: str, password: str) -> None:
    """Add or replace one user's HA1 table in the credentials file, keeping other users.

    Refuses (``CredentialsError``) to touch a file that does not load for ``realm``, so a typo'd
    realm or a broken file is reported instead of silently rewritten.
    """
    entry = passwd_entry(username, realm, password)
    target = Path(path).resolve()
    raw = _read_bytes(target)
    if raw is None:
        text = f"# sipserver credentials: HA1 digests per user (RFC 7616 §3.4.2)\n" \
               f"realm = {_toml_str(realm)}\n\n" + entry
        expected: dict[str, Any] = {"realm": realm, "users": {}}
        mode = 0o600
    else:
        old = _parse_toml(target, raw)
        _store_from_document(target, old, realm)
        text = _splice(raw.decode("utf-8"), username, entry)
        expected = dict(old)
        expected["users"] = dict(old.get("users", {}))
        try:  # keep group access if granted, never world-readable, always owner read/write
            mode = (target.stat().st_mode & 0o770) | 0o600
        except OSError:
            mode = 0o600
    expected["users"].pop(username, None)
    expected["users"][username] = tomllib.loads(entry)["users"][username]
    try:
        ok = tomllib.loads(text) == expected
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:  # unusual layout (inline tables, dotted keys...): rewrite the whole document
        text = _render(expected)
    _atomic_write(target, text.encode("utf-8"), mode)


def _atomic_write(target: Path, data: bytes, mode: int) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise CredentialsError(f"{target}: cannot write: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise CredentialsError(f"{target}: cannot write: {exc.strerror}") from None
    try:  # make the rename itself durable
        dir_fd = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
