"""Configuration: TOML -> frozen attrs values with defaults and validation.

Invariants:
- A ``Config`` that exists is valid: every value passed its field check and the cross-field rules
  (expiry ordering, TLS material for tls:/wss: listeners). Nothing downstream re-validates.
- Every failure is a ``ConfigError`` whose message names the full key path
  (``registrar.min_expires: ...``, ``unknown key "server.listn"``); no other exception escapes
  ``load_config``, ``config_from_dict`` or ``apply_overrides``.
- The attrs field metadata (help text and checker) is the single source for parsing, the
  generated reference (``render_reference`` -> docs/config.md) and the example file, so the three
  cannot disagree.
- Pure: no sockets, no trio; the only I/O is reading the file handed to ``load_config``.
- Lists are stored as tuples and domain names in lower case (RFC 3261 §19.1.4: hosts compare
  case-insensitively).

Regenerate the reference with ``python -m sipserver.config > docs/config.md``.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import attrs

from sipserver.outbound.flow import Transport

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

__all__ = [
    "AuthConfig",
    "Config",
    "ConfigError",
    "LimitsConfig",
    "ListenSpec",
    "MgmtConfig",
    "OutboundConfig",
    "ProxyConfig",
    "RateLimitConfig",
    "RegistrarConfig",
    "ServerConfig",
    "StoreConfig",
    "TlsConfig",
    "TransactionConfig",
    "UserEntry",
    "apply_overrides",
    "config_from_dict",
    "default_config",
    "load_config",
    "parse_host_port",
    "parse_listen",
    "render_example",
    "render_reference",
]

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration value is missing, unknown or invalid.

    ``str(err)`` is the message, which names the key path; ``key`` is that path (None for
    file-level problems such as a TOML syntax error); ``source`` is the file name, ``"<dict>"``
    or ``"command line"``.
    """

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        super().__init__(message)
        self.message = message
        self.key = key
        self.source = source

    def describe(self) -> str:
        """The message prefixed with where it came from, for printing to a user."""
        if self.source:
            return f"{self.source}: {self.message}"
        return self.message


def _err(key: str, what: str, got: object) -> ConfigError:
    return ConfigError(f"{key}: {what}, got {_show(got)}", key=key)


# --------------------------------------------------------------------------------------------
# TOML rendering (used for error messages, the reference and the example file)


def _toml(value: object) -> str:
    """``value`` written as a TOML value (the subset config values use)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def _show(value: object) -> str:
    """A received value for an error message; never raises."""
    if isinstance(value, dict):
        return "a table"
    try:
        text = _toml(value)
    except (TypeError, ValueError):  # not a TOML type, or an int too long for str()
        return f"a value of type {type(value).__name__}"
    return text if len(text) <= 200 else text[:200] + "..."


# --------------------------------------------------------------------------------------------
# Host names, addresses and listen specs

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def _check_host(host: str) -> str:
    """Validate a host name, IPv4 or (bracket-free) IPv6 address; return it normalised.

    Raises ValueError with a short reason.
    """
    if not host:
        raise ValueError("empty host")
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from None
    if len(host) > 253 or not _HOSTNAME_RE.fullmatch(host):
        raise ValueError(f"{host!r} is not a valid host name or IP address")
    labels = host.split(".")
    if all(label.isdigit() for label in labels):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv4 address") from None
    return host.lower()


def _split_host_port(text: str) -> tuple[str, str, str]:
    """Split ``HOST:PORT<rest>`` / ``[V6]:PORT<rest>`` into (host, port digits, rest)."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("missing ']' after IPv6 address")
        host, after = text[1:close], text[close + 1 :]
        if ":" not in host:
            raise ValueError("brackets are only for IPv6 addresses")
        if not after.startswith(":"):
            raise ValueError("expected ':PORT' after the IPv6 address")
        after = after[1:]
    else:
        # Two colons before any path can only be an IPv6 address without its brackets.
        if text.split("/", 1)[0].count(":") > 1:
            raise ValueError("IPv6 addresses must be in brackets, e.g. [::1]:5060")
        host, sep, after = text.partition(":")
        if not sep:
            raise ValueError("missing ':PORT'")
    m = re.match(r"([0-9]*)(.*)", after, re.DOTALL)
    assert m is not None  # the pattern matches every string
    return host, m.group(1), m.group(2)


def _check_port(digits: str, *, allow_zero: bool = True) -> int:
    if not digits:
        raise ValueError("missing port")
    port = int(digits)
    lo = 0 if allow_zero else 1
    if not lo <= port <= 65535 or len(digits) > 5:
        raise ValueError(f"port {digits} out of range {lo}..65535")
    return port


ListenTransport = Literal["udp", "tcp", "tls", "ws", "wss"]
_LISTEN_TRANSPORTS: tuple[ListenTransport, ...] = ("udp", "tcp", "tls", "ws", "wss")
_PATH_RE = re.compile(r"/[!-~]*")  # visible ASCII, no spaces


def _listen_transport(value: ListenTransport | str | Transport) -> ListenTransport:
    """A listener transport as the config names it (``udp`` ... ``wss``); any case, or a
    ``Transport``, is accepted. ValueError for anything else."""
    name = value.value.lower() if isinstance(value, Transport) else str(value).lower()
    for known in _LISTEN_TRANSPORTS:
        if name == known:
            return known
    raise ValueError(
        f"unknown listener transport {value!r} (use one of {', '.join(_LISTEN_TRANSPORTS)})"
    )


@attrs.frozen(slots=True)
class ListenSpec:
    """One socket to listen on: ``TRANSPORT:HOST:PORT[/PATH]`` (PATH only for ws/wss).

    ``host`` holds IPv6 addresses without brackets (a name or ``0.0.0.0``/``::`` for all);
    ``port`` 0 asks the OS for a free port; ``path`` is the HTTP path of the WebSocket upgrade
    (RFC 7118 §4). ``transport`` takes any case or a ``Transport``. ``str()`` renders the spec
    back so that ``parse_listen(str(s)) == s``. The transport layer's ``serve`` binds these.
    """

    transport: ListenTransport = attrs.field(converter=_listen_transport)
    host: str
    port: int
    path: str = "/"
    # The public address the server writes for this listener (a server behind a 1:1 NAT):
    # ``;advertise=HOST[:PORT]``; empty host: the bound address; no port: the bound port.
    advertise_host: str = ""
    advertise_port: int | None = None

    @property
    def flow_transport(self) -> Transport:
        """The Via/Flow transport this listener produces (RFC 7118 §5.2 for WS/WSS)."""
        return Transport(self.transport.upper())

    @property
    def is_stream(self) -> bool:
        return self.transport != "udp"

    @property
    def needs_tls(self) -> bool:
        return self.transport in ("tls", "wss")

    @property
    def is_wildcard(self) -> bool:
        """True when bound to every address (0.0.0.0 or ::), so ``advertise`` matters."""
        return self.host in ("0.0.0.0", "::")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = self.path if self.transport in ("ws", "wss") and self.path != "/" else ""
        adv = ""
        if self.advertise_host:
            ahost = f"[{self.advertise_host}]" if ":" in self.advertise_host else self.advertise_host
            adv = f";advertise={ahost}" + (f":{self.advertise_port}" if self.advertise_port else "")
        return f"{self.transport}:{host}:{self.port}{path}{adv}"


def parse_listen(spec: str) -> ListenSpec:
    """Parse ``udp|tcp|tls:HOST:PORT`` or ``ws|wss:HOST:PORT[/PATH]``; IPv6 as ``[::1]``;
    ``;advertise=HOST[:PORT]`` at the end names the public address a server behind a 1:1 NAT
    writes in Via, Record-Route and Path for this listener.

    Raises ConfigError naming the spec and what is wrong with it.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"listen spec must be a string, got {_show(spec)}")

    def bad(why: str) -> ConfigError:
        return ConfigError(f"bad listen spec {_show(spec)}: {why}")

    # The option is the last ``;`` segment when it names ``advertise``; a WebSocket path may
    # itself hold ``;`` (RFC 3986 path parameters), so any other ``;`` stays in the spec.
    main, semi, option = spec.strip().rpartition(";")
    if not semi or option.split("=", 1)[0].strip().lower() != "advertise":
        main, semi, option = spec.strip(), "", ""
    adv_host, adv_port = "", None
    if semi:
        name, eq, value = option.partition("=")
        if not eq or not value.strip():
            raise bad("advertise needs a value: ;advertise=HOST[:PORT]")
        try:
            if value.strip().startswith("[") or value.count(":") == 1:
                adv_host, port_text, tail = _split_host_port(value.strip())
                if tail:
                    raise ValueError(f"unexpected {tail!r} after the port")
                adv_host, adv_port = _check_host(adv_host), _check_port(port_text, allow_zero=False)
            else:
                adv_host = _check_host(value.strip())
        except ValueError as exc:
            raise bad(f"advertise: {exc}") from None
    parsed = _parse_listen_main(main, bad)
    return attrs.evolve(parsed, advertise_host=adv_host, advertise_port=adv_port)


def _parse_listen_main(spec: str, bad: Callable[[str], ConfigError]) -> ListenSpec:
    transport, sep, rest = spec.strip().partition(":")
    transport = transport.lower()
    if not sep:
        raise bad("expected TRANSPORT:HOST:PORT, e.g. udp:0.0.0.0:5060")
    if transport not in _LISTEN_TRANSPORTS:
        raise bad(f"unknown transport {transport!r}, use one of udp, tcp, tls, ws, wss")
    try:
        host_text, digits, tail = _split_host_port(rest)
        host = _check_host(host_text)
        port = _check_port(digits)
    except ValueError as exc:
        raise bad(str(exc)) from None
    path = "/"
    if tail:
        if not tail.startswith("/"):
            raise bad(f"unexpected {tail!r} after the port")
        if transport not in ("ws", "wss"):
            raise bad("a path is only allowed for ws and wss")
        if not _PATH_RE.fullmatch(tail):
            raise bad("the path must be visible ASCII without spaces")
        path = tail
    return ListenSpec(transport, host, port, path)


def _host_port(text: str, allow_zero: bool) -> tuple[str, int]:
    host_text, digits, tail = _split_host_port(text.strip())
    if tail:
        raise ValueError(f"unexpected {tail!r} after the port")
    return _check_host(host_text), _check_port(digits, allow_zero=allow_zero)


def parse_host_port(text: str, *, allow_zero: bool = True) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (IPv6 as ``[::1]:8080``) into (host without brackets, port).

    Raises ConfigError (without a key) describing the problem.
    """
    if not isinstance(text, str):
        raise ConfigError(f"expected HOST:PORT, got {_show(text)}")
    try:
        return _host_port(text, allow_zero)
    except ValueError as exc:
        raise ConfigError(f"bad address {_show(text)}: {exc}") from None


def _redis_url(text: str) -> str:
    """store.redis_url: a URL the redis client accepts (checked here, so a typo fails at
    start-up with the key to fix, not at the first REGISTER)."""
    from urllib.parse import parse_qs, urlsplit

    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if url.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"must start with redis://, rediss:// or unix://, not {url.scheme + '://' if url.scheme else 'no scheme'}"
        )
    if url.scheme == "unix":
        if not url.path:
            raise ValueError("unix:// needs the socket path (unix:///run/redis/redis.sock)")
        db = parse_qs(url.query).get("db", ["0"])[-1]
    else:
        if not url.hostname:
            raise ValueError("needs a host (redis://127.0.0.1:6379/0)")
        if port == 0:
            raise ValueError("port must be 1..65535")
        db = url.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"database must be a number, not {db!r}")
    return text


def _node_id(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}|", text):
        raise ValueError("must be 1 to 32 lower-case letters, digits, _ or - (starting with a letter or digit)")
    return text


def _cluster_address(text: str) -> str:
    if not text:
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT (an IPv6 host in brackets)")
    return text


def _redis_key_prefix(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:{}-]{0,64}", text):
        raise ValueError("must be at most 64 letters, digits or _ . : { } -")
    return text


# --------------------------------------------------------------------------------------------
# Field checkers: each turns a raw TOML value into the stored value or raises ConfigError.


class _Check:
    """Base checker; ``kind`` is the type line of the reference."""

    @property
    def kind(self) -> str:
        return "value"

    @property
    def secret(self) -> bool:
        """Secrets (keys, passwords, HA1s) are never echoed back in error messages."""
        return False

    def fail(self, key: str, what: str, value: object) -> ConfigError:
        if self.secret:
            return ConfigError(f"{key}: {what} (value not shown)", key=key)
        return _err(key, what, value)

    def __call__(self, key: str, value: object) -> Any:
        raise NotImplementedError

    def to_toml(self, value: Any) -> object:
        """The stored value as the raw TOML value it was read from."""
        return value


@attrs.frozen
class _Int(_Check):
    lo: int
    hi: int | None = None

    @property
    def kind(self) -> str:
        if self.hi is None:
            return f"integer >= {self.lo}"
        return f"integer {self.lo}..{self.hi}"

    def __call__(self, key: str, value: object) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < self.lo
            or (self.hi is not None and value > self.hi)
        ):
            raise _err(key, f"must be an {self.kind}", value)
        return value


@attrs.frozen
class _Float(_Check):
    lo: float
    exclusive: bool = False

    @property
    def kind(self) -> str:
        return f"number {'>' if self.exclusive else '>='} {self.lo:g}"

    def __call__(self, key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _err(key, f"must be a {self.kind}", value)
        try:
            number = float(value)
        except OverflowError:  # an int too big for a float
            raise _err(key, f"must be a {self.kind}", value) from None
        too_low = number <= self.lo if self.exclusive else number < self.lo
        if not math.isfinite(number) or too_low:
            raise _err(key, f"must be a {self.kind}", value)
        return number


@attrs.frozen
class _Bool(_Check):
    @property
    def kind(self) -> str:
        return "boolean"

    def __call__(self, key: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise _err(key, "must be true or false", value)
        return value


@attrs.frozen
class _Choice(_Check):
    options: tuple[str, ...]

    @property
    def kind(self) -> str:
        return "one of " + ", ".join(_toml(o) for o in self.options)

    def __call__(self, key: str, value: object) -> str:
        if not isinstance(value, str) or value not in self.options:
            raise _err(key, f"must be {self.kind}", value)
        return value


@attrs.frozen
class _Str(_Check):
    """A string, optionally normalised/validated by ``check`` (which raises ValueError(why))."""

    label: str = "string"
    check: Callable[[str], str] | None = None
    hidden: bool = False

    @property
    def kind(self) -> str:
        return self.label

    @property
    def secret(self) -> bool:
        return self.hidden

    def __call__(self, key: str, value: object) -> str:
        if not isinstance(value, str):
            raise self.fail(key, "must be a string", value)
        if self.check is None:
            return value
        try:
            return self.check(value)
        except ValueError as exc:
            raise self.fail(key, str(exc), value) from None


@attrs.frozen
class _List(_Check):
    item: _Check
    unique: bool = True

    @property
    def kind(self) -> str:
        return f"list of {self.item.kind}s"

    @property
    def secret(self) -> bool:
        return self.item.secret

    def __call__(self, key: str, value: object) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise _err(key, f"must be a {self.kind}", value)
        items = tuple(self.item(f"{key}[{i}]", v) for i, v in enumerate(value))
        if self.unique:
            for i, v in enumerate(items):
                if v in items[:i]:
                    raise self.fail(f"{key}[{i}]", "is a duplicate", self.item.to_toml(v))
        return items

    def to_toml(self, value: Any) -> object:
        return [self.item.to_toml(v) for v in value]


@attrs.frozen
class _NonEmptyList(_List):
    def __call__(self, key: str, value: object) -> tuple[Any, ...]:
        items = super().__call__(key, value)
        if not items:
            raise _err(key, f"must be a non-empty {self.kind}", value)
        return items


@attrs.frozen
class _Listen(_Check):
    @property
    def kind(self) -> str:
        return "listen spec"

    def __call__(self, key: str, value: object) -> ListenSpec:
        try:
            return parse_listen(cast(str, value))
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc.message}", key=key) from None

    def to_toml(self, value: Any) -> object:
        return str(value)


@attrs.frozen
class _ListenList(_List):
    """Listen specs: at least one, and no two listeners on one UDP or TCP host:port."""

    def __call__(self, key: str, value: object) -> tuple[Any, ...]:
        specs = cast(tuple[ListenSpec, ...], super().__call__(key, value))
        if not specs:
            raise _err(key, "must list at least one listen spec", value)
        for i, spec in enumerate(specs):
            if spec.port == 0:
                continue
            for other in specs[:i]:
                if (spec.host, spec.port, spec.is_stream) == (
                    other.host,
                    other.port,
                    other.is_stream,
                ):
                    proto = "TCP" if spec.is_stream else "UDP"
                    raise ConfigError(
                        f"{key}[{i}]: {_show(str(spec))} uses the same {proto} address as "
                        f"{_show(str(other))}",
                        key=f"{key}[{i}]",
                    )
        return specs


@attrs.frozen
class _AuthEnabled(_Check):
    @property
    def kind(self) -> str:
        return 'true, false or "auto"'

    def __call__(self, key: str, value: object) -> bool | Literal["auto"]:
        if isinstance(value, bool):
            return value
        if value == "auto":
            return "auto"
        raise _err(key, 'must be true, false or "auto"', value)


def _domain(text: str) -> str:
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return _check_host(host)
    except ValueError:
        raise ValueError("must be a domain name or IP address") from None


def _optional_host(text: str) -> str:
    try:
        return _domain(text) if text else ""
    except ValueError:
        raise ValueError("must be a host name or IP address, or empty") from None


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _printable(text: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError("must not contain control characters")
    return text


def _secret(text: str) -> str:
    if text and len(text.encode()) < 16:
        raise ValueError("must be empty (generate one) or at least 16 bytes long")
    return text


def _required_secret(text: str) -> str:
    if len(text.encode()) < 16:
        raise ValueError("must be at least 16 bytes long")
    return text


def _mgmt_listen(text: str) -> str:
    if not text:
        return ""
    try:
        host, port = _host_port(text, allow_zero=True)
    except ValueError as exc:
        raise ValueError(f"must be HOST:PORT or empty ({exc})") from None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _hex(length: int) -> Callable[[str], str]:
    def check(text: str) -> str:
        if text and not re.fullmatch(rf"[0-9a-fA-F]{{{length}}}", text):
            raise ValueError(f"must be {length} hexadecimal digits")
        return text.lower()

    return check


def _opt(default: T, check: _Check, help: str) -> T:
    """An attrs field whose metadata drives parsing, the reference and the example."""
    # mypy sees the declared type; attrs sees the field.
    # Secrets stay out of repr, so logging a Config cannot leak them.
    field: T = attrs.field(
        default=default, repr=not check.secret, metadata={"help": help, "check": check}
    )
    return field


# --------------------------------------------------------------------------------------------
# Sections


@attrs.frozen
class ServerConfig:
    """[server]: sockets, names and logging."""

    listen: tuple[ListenSpec, ...] = _opt(
        (
            ListenSpec("udp", "0.0.0.0", 5060),
            ListenSpec("tcp", "0.0.0.0", 5060),
            ListenSpec("ws", "0.0.0.0", 5066),
        ),
        _ListenList(_Listen()),
        "Sockets to listen on, each `TRANSPORT:HOST:PORT[/PATH]` with TRANSPORT one of udp, tcp, "
        "tls, ws, wss. IPv6 hosts go in brackets (`tcp:[::1]:5060`); port 0 picks a free port; "
        "PATH (ws and wss only, default `/`) is the WebSocket resource (RFC 7118 §4). "
        "A server behind a 1:1 NAT (a cloud VM) appends `;advertise=PUBLIC[:PORT]` and then "
        "writes that address in every Via, Record-Route and Path of this listener "
        "(docs/nat.md). `--listen` on the command line replaces this list.",
    )
    domains: tuple[str, ...] = _opt(
        (),
        _List(_Str("domain name", _domain)),
        "Domains this server is registrar and home proxy for. Its own listen addresses, the "
        "advertised name and `localhost` always count as served. Compared case-insensitively "
        "(RFC 3261 §19.1.4). `--domain` on the command line replaces this list.",
    )
    advertise: str = _opt(
        "",
        _Str("host name or IP address, or empty", _optional_host),
        "Host name or IP address put in Via, Record-Route and Path when a listener is bound to a "
        'wildcard address (0.0.0.0 or ::). "" picks one automatically.',
    )
    data_dir: str = _opt(
        "./sipserver-data",
        _Str("path", _nonempty),
        "Directory for the location database and generated keys; created when missing. "
        "Relative paths are taken from the working directory.",
    )
    log_level: str = _opt(
        "info",
        _Choice(("debug", "info", "warning", "error")),
        "Lowest log level written to standard error.",
    )
    log_format: str = _opt(
        "text",
        _Choice(("text", "json")),
        "`text`: one line per record, `TIME LEVEL LOGGER: message`. `json`: one JSON object "
        "per line with `ts`, `level`, `logger`, `msg` and any extra fields.",
    )
    server_header: str = _opt(
        "sipserver",
        _Str("string", _printable),
        "Value of the Server header in responses and of User-Agent in requests this server "
        'originates (RFC 3261 §20.35, §20.41); "" leaves the header out.',
    )


@attrs.frozen
class TlsConfig:
    """[tls]: certificate material for tls: and wss: listeners."""

    cert: str = _opt(
        "",
        _Str("path"),
        "PEM certificate chain for tls: and wss: listeners; required when any is configured.",
    )
    key: str = _opt("", _Str("path"), "PEM private key matching `cert`.")
    ca: str = _opt(
        "",
        _Str("path"),
        "Optional PEM CA bundle used to verify client certificates; "
        '"" means client certificates are not requested.',
    )
    min_version: str = _opt("1.2", _Choice(("1.2", "1.3")), "Lowest TLS protocol version accepted.")


@attrs.frozen
class RegistrarConfig:
    """[registrar]: binding rules (RFC 3261 §10.3, RFC 5626 §6, RFC 5627)."""

    min_expires: int = _opt(
        60,
        _Int(1),
        "Shortest registration accepted, in seconds: a shorter non-zero expiry gets 423 "
        "Interval Too Brief with Min-Expires (RFC 3261 §10.3 step 7).",
    )
    max_expires: int = _opt(
        7200,
        _Int(1),
        "Longest registration granted, in seconds; longer requests are shortened to this "
        "(RFC 3261 §10.3 step 7).",
    )
    default_expires: int = _opt(
        3600,
        _Int(1),
        "Expiry used when a Contact has no expires parameter and the request no Expires "
        "header. Must lie between min_expires and max_expires.",
    )
    flow_timer: int = _opt(
        120,
        _Int(30),
        "Seconds sent in Flow-Timer on a 2xx to an outbound REGISTER: the UA keeps the flow "
        "alive at least this often (RFC 5626 §4.4.1, §6) on TCP, TLS, WS and WSS. At least 30; "
        "cloud NATs and load balancers drop idle TCP after about two minutes.",
    )
    flow_timer_udp: int = _opt(
        25,
        _Int(10),
        "Flow-Timer sent to outbound phones registering over UDP: consumer NATs forget an idle "
        "UDP mapping after about 30 s, so the phone's STUN keepalives must come more often.",
    )
    outbound_without_first_hop: bool = _opt(
        False,
        _Bool(),
        "A REGISTER asking for outbound whose first hop did not mark its Path with `ob` gets "
        "439 First Hop Lacks Outbound Support (RFC 5626 §6). When true it is accepted as an "
        "outbound registration instead.",
    )
    gruu: bool = _opt(
        True,
        _Bool(),
        "Assign public and temporary GRUUs to registrations that carry `+sip.instance` and "
        "`Supported: gruu` (RFC 5627 §6).",
    )
    require_instance: bool = _opt(
        False,
        _Bool(),
        "Reject REGISTER requests whose Contacts carry no `+sip.instance` (a local policy "
        "RFC 5626 §6 allows).",
    )


@attrs.frozen
class ProxyConfig:
    """[proxy]: routing policy (RFC 3261 §16, RFC 5626 §5 and §7)."""

    record_route: bool = _opt(
        True,
        _Bool(),
        "Add Record-Route so in-dialog requests come back through this server, which is what "
        "keeps outbound flows usable mid-dialog (RFC 3261 §16.6 step 4, RFC 5626 §5.3).",
    )
    timer_c: float = _opt(
        180.0,
        _Float(1.0),
        "Timer C in seconds: an INVITE branch with no final response for this long is "
        "cancelled (RFC 3261 §16.6 step 11).",
    )
    relay_domains: tuple[str, ...] = _opt(
        (),
        _List(_Str("domain name", _domain)),
        "Foreign domains requests may be forwarded to. [] means no open relay: requests for "
        "domains this server does not serve are refused.",
    )
    timeout_removes_binding: bool = _opt(
        False,
        _Bool(),
        "When a branch to an outbound binding times out, remove the binding as for a failed "
        "flow (RFC 5626 §7 leaves this to policy). False: only transport errors and 430 "
        "remove bindings.",
    )
    keepalive_grace: float = _opt(
        20.0,
        _Float(0.0),
        "Seconds of silence allowed beyond the Flow-Timer granted to an outbound flow "
        "(registrar.flow_timer_udp on UDP, registrar.flow_timer otherwise): a flow from which "
        "nothing arrived (no SIP, CRLF or STUN) for Flow-Timer plus this long is closed as "
        "\"keepalive timeout\" and its bindings are removed (RFC 5626 §4.4, §5.4).",
    )


@attrs.frozen
class TransactionConfig:
    """[transaction]: RFC 3261 §17 timer values."""

    t1: float = _opt(
        0.5,
        _Float(0.0, exclusive=True),
        "T1, the round-trip estimate in seconds; retransmit intervals start here "
        "(RFC 3261 §17.1.1.1).",
    )
    t2: float = _opt(
        4.0,
        _Float(0.0, exclusive=True),
        "T2, the longest retransmit interval for non-INVITE requests and INVITE responses "
        "(RFC 3261 §17.1.2.2). Must be >= t1.",
    )
    t4: float = _opt(
        5.0,
        _Float(0.0, exclusive=True),
        "T4, the longest time a message stays in the network (RFC 3261 §17.1.2.2).",
    )


@attrs.frozen
class LimitsConfig:
    """[limits]: resource bounds that keep bad or hostile peers from hurting the server."""

    max_message_size: int = _opt(
        65535,
        _Int(1500),
        "Largest SIP message accepted, in bytes; larger ones are refused (513 where an answer "
        "is possible) or dropped.",
    )
    max_connections: int = _opt(
        20000,
        _Int(1),
        "Most simultaneous TCP, TLS and WebSocket connections. At start-up the open-file limit "
        "(RLIMIT_NOFILE) is raised to fit this plus 64 for listeners and files; where the hard "
        "limit is lower, this is lowered to fit, with a warning naming both numbers.",
    )
    max_connections_per_ip: int = _opt(
        200,
        _Int(1),
        "Most simultaneous connections from one IP address. An office NAT or a load balancer "
        "puts many clients behind one address: raise it for those (a refused connection is "
        "logged naming this setting).",
    )
    max_udp_flows: int = _opt(
        100000,
        _Int(1),
        "Most UDP flows (source address and port pairs) tracked at once, about 600 bytes each "
        "(60 MB at the default). A "
        "new source beyond it evicts the flow without a binding heard from least recently; "
        "flows carrying a binding are never evicted (a new source is then answered but not "
        "tracked). Raise it above the number of UDP phones plus other UDP peers.",
    )
    partial_message_timeout: float = _opt(
        10.0,
        _Float(0.0, exclusive=True),
        "Seconds a connection may hold an incomplete message (a TCP/TLS message, or a "
        "WebSocket frame or fragmented message) before it is closed (slow-sender protection).",
    )
    idle_flow_timeout: float = _opt(
        300.0,
        _Float(0.0, exclusive=True),
        "Seconds a flow that carries no binding may stay silent before it is closed (a UDP "
        "flow is forgotten, but a flow token naming it still reaches it). Flows with outbound "
        "bindings follow the Flow-Timer + proxy.keepalive_grace instead; flows with other "
        "bindings are kept while the bindings live.",
    )
    max_headers: int = _opt(256, _Int(8), "Most header fields in one message.")
    max_vias: int = _opt(32, _Int(1), "Most Via header values in one message.")
    max_route_values: int = _opt(
        32,
        _Int(1),
        "Most Route plus Record-Route values in one message (checked before anything else reads "
        "them: route processing stays cheap whatever a message carries).",
    )
    udp_warn_size: int = _opt(
        1300,
        _Int(1),
        "Log a warning when a request sent over UDP is larger than this many bytes "
        "(RFC 3261 §18.1.1 prefers a congestion-controlled transport above 1300).",
    )
    overload_queue_delay: float = _opt(
        0.05,
        _Float(0.0),
        "Overload control: while requests wait longer than this many seconds in the socket "
        "queues (the kernel's receive timestamps of UDP datagrams and TCP bytes, Linux), the "
        "event loop runs this late or REGISTER replies wait this long besides the location "
        "store's writes, new requests on any transport are answered 503 Service Unavailable "
        "with Retry-After instead of being handled, which costs a fraction of handling them, so "
        "the queues drain and the clients back off (RFC 3261 §21.5.4); shedding stops when the "
        "waits are under a quarter of it. ACK, CANCEL, in-dialog requests and retransmissions "
        "of requests already handled are never refused. 0 turns it off.",
    )
    overload_store_delay: float = _opt(
        1.0,
        _Float(0.0),
        "Overload control of the location store: while REGISTER replies are held longer than "
        "this many seconds for the store's write (SQLite's fsync, Redis), new REGISTERs (and "
        "only they: nothing else writes to the store) are answered 503 with Retry-After. Held "
        "for the disk, a reply waits for at most two writes however many REGISTERs arrive, so "
        "a slow disk is not an overload; this limit is above a slow disk's stalls and catches a "
        "store that falls further behind with every write. 0 turns it off.",
    )
    overload_retry_after: int = _opt(
        10, _Int(1), "Retry-After seconds of the overload 503 (see overload_queue_delay)."
    )


@attrs.frozen
class AuthConfig:
    """[auth]: digest authentication (RFC 3261 §22, RFC 7616) and brute-force protection."""

    enabled: bool | Literal["auto"] = _opt(
        cast("bool | Literal['auto']", "auto"),
        _AuthEnabled(),
        'true, false, or "auto": on when [users] entries or a credentials_file are configured.',
    )
    realm: str = _opt(
        "",
        _Str("string", _printable),
        'Digest realm (RFC 3261 §22.1). "" means the first served domain, or "sipserver" when '
        "there is none.",
    )
    credentials_file: str = _opt(
        "",
        _Str("path"),
        'File of HA1 entries maintained with `sipserver passwd`; "" for none.',
    )
    nonce_lifetime: float = _opt(
        300.0,
        _Float(0.0, exclusive=True),
        "Seconds a nonce stays valid; after that the client is challenged again with "
        "stale=true (RFC 7616 §3.3).",
    )
    trust_registered_flows: bool = _opt(
        True,
        _Bool(),
        "A request arriving on a flow on which an authenticated REGISTER of a user bound a "
        "binding that is still alive (outbound or not, any transport) counts as that user's "
        "without a new challenge; a From naming another of our users still gets 403. Over UDP "
        "a flow is only a source address and port.",
    )
    max_failures: int = _opt(
        10,
        _Int(0),
        "Failed authentications from one IP address within failure_window before the "
        "address is banned; 0 disables banning.",
    )
    failure_window: float = _opt(
        60.0, _Float(0.0, exclusive=True), "Seconds over which failures are counted."
    )
    ban_time: float = _opt(
        600.0,
        _Float(0.0),
        "Seconds an address stays banned: every request from it that needs authentication is "
        "answered 403 Forbidden (too many failed authentications) without looking at its "
        "credentials; 0 disables banning.",
    )
    algorithms: tuple[str, ...] = _opt(
        ("SHA-256", "MD5"),
        _NonEmptyList(_Choice(("SHA-256", "MD5"))),
        "Digest algorithms offered, one challenge each, in this order (RFC 8760: SHA-256 "
        "first). Some old clients (baresip 1.0 with libre 1.1) give up when any challenge "
        'uses an algorithm they lack, so they need `["MD5"]` alone.',
    )
    secret: str = _opt(
        "",
        _Str("string", _secret, hidden=True),
        'Key that signs nonces, at least 16 bytes. "" derives one from the flow-token key, '
        "so nonces stay valid across restarts.",
    )


@attrs.frozen
class RateLimitConfig:
    """[rate_limit]: per-source-address token bucket."""

    enabled: bool = _opt(True, _Bool(), "Limit the request rate of each source IP address.")
    requests_per_second: float = _opt(
        200.0, _Float(0.0, exclusive=True), "Sustained requests per second per address."
    )
    burst: float = _opt(
        400.0,
        _Float(1.0),
        "Bucket size: how many requests an address may send at once above the sustained rate.",
    )
    action: str = _opt(
        "reject",
        _Choice(("reject", "drop")),
        "What happens to a request over the limit: `reject` answers it with an error "
        "response, `drop` discards it silently (cheaper under a flood).",
    )


@attrs.frozen
class StoreConfig:
    """[store]: where bindings live."""

    backend: str = _opt(
        "sqlite",
        _Choice(("sqlite", "memory", "redis")),
        "`sqlite` keeps bindings across restarts; `memory` loses them on exit; `redis` keeps "
        "them in the Redis server at `store.redis_url`, one key per binding with a Redis TTL "
        "of the binding's remaining lifetime (docs/redis.md).",
    )
    path: str = _opt(
        "", _Str("path"), 'SQLite database file; "" means `<data_dir>/location.sqlite`.'
    )
    redis_url: str = _opt(
        "redis://127.0.0.1:6379/0",
        _Str("URL", _redis_url, hidden=True),
        "Redis server of `backend = \"redis\"`: `redis://[[user]:password@]host[:port][/db]`, "
        "`rediss://` for TLS, or `unix:///path/to/redis.sock[?db=N]`. It must be reachable at "
        "start-up (the live bindings are loaded from it); while it is not, REGISTERs are "
        "answered 503 with Retry-After and calls still route to the bindings already known.",
    )
    redis_key_prefix: str = _opt(
        "sipserver:",
        _Str("string", _redis_key_prefix),
        "Prefix of this server's Redis keys (a binding is `<prefix>binding:<key>`), so other "
        "data, or another server, can share the database.",
    )
    redis_timeout: float = _opt(
        1.0,
        _Float(0.0, exclusive=True),
        "Seconds to connect to Redis or wait for one of its answers; a write that fails (after "
        "one retry on a fresh connection) answers its REGISTERs 503.",
    )
    redis_retry_after: int = _opt(
        5, _Int(1, 3600), "Retry-After (seconds) of the 503 answered while Redis is unreachable."
    )


@attrs.frozen
class OutboundConfig:
    """[outbound]: flow-token keys (RFC 5626 §5.2)."""

    secret: str = _opt(
        "",
        _Str("string", _secret, hidden=True),
        'HMAC key for flow tokens, at least 16 bytes. "" generates one once and keeps it in '
        "`<data_dir>/flow-token.key`, so tokens survive a restart.",
    )
    previous_secrets: tuple[str, ...] = _opt(
        (),
        _List(_Str("string", _required_secret, hidden=True)),
        "Older flow-token keys still accepted, so rotating `secret` does not break existing "
        "registrations and dialogs.",
    )


@attrs.frozen
class MgmtConfig:
    """[mgmt]: the HTTP management API."""

    listen: str = _opt(
        "",
        _Str("HOST:PORT, or empty", _mgmt_listen),
        '`HOST:PORT` of the management API (status, metrics); "" turns it off. Keep it on a '
        "loopback address unless a token is set.",
    )
    token: str = _opt(
        "",
        _Str("string", _printable, hidden=True),
        'Bearer token the management API requires; "" requires none.',
    )

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to bind, or None when the API is off."""
        return parse_host_port(self.listen) if self.listen else None


@attrs.frozen
class UserEntry:
    """One [users.NAME] table: a password or precomputed HA1 values for the realm."""

    password: str = _opt("", _Str("string", hidden=True), "Plain-text password.")
    ha1_md5: str = _opt(
        "",
        _Str("32 hex digits", _hex(32), hidden=True),
        "MD5(NAME:realm:password) in hex, used instead of a password (RFC 7616 §3.4.2).",
    )
    ha1_sha256: str = _opt(
        "",
        _Str("64 hex digits", _hex(64), hidden=True),
        "SHA-256(NAME:realm:password) in hex, used instead of a password (RFC 7616 §3.4.2).",
    )


@attrs.frozen
class NatConfig:
    """[nat]: phones behind NAT that do not do SIP Outbound (docs/nat.md)."""

    keepalive: bool = _opt(
        True,
        _Bool(),
        "Send an OPTIONS down the flow of every UDP binding made without outbound, so the "
        "phone's NAT keeps its mapping open and a dead phone is noticed.",
    )
    keepalive_interval: float = _opt(
        25.0,
        _Float(1.0),
        "Seconds between keepalive OPTIONS to one phone; consumer NATs forget idle UDP "
        "mappings after about 30 s. Pings are spread evenly over the interval.",
    )
    keepalive_failures: int = _opt(
        3,
        _Int(1),
        "Unanswered keepalives in a row after which the flow is dead: its bindings are removed.",
    )


@attrs.frozen
class ClusterConfig:
    """[cluster]: this server as one node of several sharing bindings in Redis (docs/cluster.md)."""

    node_id: str = _opt(
        "",
        _Str("name", _node_id),
        "This node's name in the cluster; \"\" means no cluster (one server on its own). Every "
        "node needs `store.backend = \"redis\"`, the same Redis, `store.redis_key_prefix` and "
        "`outbound.secret`, and a name of its own. The flow tokens a node mints name it, so any "
        "node sends a request for a phone to the node holding the phone's flow.",
    )
    address: str = _opt(
        "",
        _Str("HOST:PORT", _cluster_address),
        "Where the other nodes reach this one; \"\" means the first TCP listener (else the "
        "first UDP one), with `;advertise` applied. Must be an address the other nodes can "
        "reach, not a wildcard.",
    )
    heartbeat_interval: float = _opt(
        1.0,
        _Float(0.05),
        "Seconds between two refreshes of this node's heartbeat key in Redis.",
    )
    heartbeat_ttl: float = _opt(
        3.0,
        _Float(0.1),
        "Seconds without a heartbeat after which the other nodes hold this node dead: they "
        "stop routing to it and remove the bindings whose flow it held.",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.node_id)


def _ng_address(text: str) -> str:
    """An rtpengine ng address, ``udp:HOST:PORT``, normalised (issue 18)."""
    from sipserver.media.ng import parse_ng_address

    return str(parse_ng_address(text))


@attrs.frozen
class MediaConfig:
    """[media]: media anchoring through rtpengine (issue 18)."""

    rtpengine: tuple[str, ...] = _opt(
        (),
        _List(_Str("udp:HOST:PORT", _ng_address)),
        "rtpengine ng control addresses, `udp:HOST:PORT` (IPv6 in brackets), tried in order: the "
        "next takes over when one stops answering. [] turns media anchoring off.",
    )
    anchor: str = _opt(
        "auto",
        _Choice(("auto", "always", "never")),
        "Which calls go through rtpengine: `auto` when one party is a browser (WebRTC: WS/WSS, "
        "or an RTP/SAVPF offer with ICE) and the other is not, or a plain phone is behind NAT; "
        "`always` every call with SDP; `never` none.",
    )
    timeout: float = _opt(
        0.5,
        _Float(0.0, exclusive=True),
        "Seconds to wait for rtpengine's reply to one try of an ng command.",
    )
    retransmissions: int = _opt(
        2,
        _Int(0, 10),
        "How many times an unanswered ng command is sent again (same cookie) before the next "
        "rtpengine is tried; a call setup waits at most timeout * (retransmissions + 1) per "
        "rtpengine.",
    )
    dead_time: float = _opt(
        30.0,
        _Float(0.0),
        "Seconds an rtpengine that did not answer is tried last (one try only).",
    )
    on_failure: str = _opt(
        "reject",
        _Choice(("reject", "pass")),
        "When no rtpengine handles an offer: `reject` answers the INVITE, re-INVITE or UPDATE "
        "503; `pass` forwards it with its SDP untouched. Responses and ACKs always pass. "
        "Either way it is logged.",
    )
    session_timeout: float = _opt(
        86400.0,
        _Float(1.0),
        "Seconds without signalling after which an answered, anchored call is deleted from "
        "rtpengine (its BYE was lost); rtpengine ends calls without media by itself sooner.",
    )

    @property
    def enabled(self) -> bool:
        """Anchoring is on: an rtpengine is configured and anchor is not `never`."""
        return bool(self.rtpengine) and self.anchor != "never"


_SECTIONS: tuple[tuple[str, type[Any]], ...] = (
    ("server", ServerConfig),
    ("tls", TlsConfig),
    ("registrar", RegistrarConfig),
    ("proxy", ProxyConfig),
    ("transaction", TransactionConfig),
    ("limits", LimitsConfig),
    ("auth", AuthConfig),
    ("rate_limit", RateLimitConfig),
    ("store", StoreConfig),
    ("outbound", OutboundConfig),
    ("mgmt", MgmtConfig),
    ("nat", NatConfig),
    ("media", MediaConfig),
    ("cluster", ClusterConfig),
)


@attrs.frozen
class Config:
    """The whole configuration; every section defaults, so ``Config()`` is the default."""

    server: ServerConfig = attrs.field(factory=ServerConfig)
    tls: TlsConfig = attrs.field(factory=TlsConfig)
    registrar: RegistrarConfig = attrs.field(factory=RegistrarConfig)
    proxy: ProxyConfig = attrs.field(factory=ProxyConfig)
    transaction: TransactionConfig = attrs.field(factory=TransactionConfig)
    limits: LimitsConfig = attrs.field(factory=LimitsConfig)
    auth: AuthConfig = attrs.field(factory=AuthConfig)
    rate_limit: RateLimitConfig = attrs.field(factory=RateLimitConfig)
    store: StoreConfig = attrs.field(factory=StoreConfig)
    outbound: OutboundConfig = attrs.field(factory=OutboundConfig)
    mgmt: MgmtConfig = attrs.field(factory=MgmtConfig)
    nat: NatConfig = attrs.field(factory=NatConfig)
    media: MediaConfig = attrs.field(factory=MediaConfig)
    cluster: ClusterConfig = attrs.field(factory=ClusterConfig)
    # Mapping values are not hashable; users take no part in hashing.
    users: Mapping[str, UserEntry] = attrs.field(factory=dict, hash=False)

    @property
    def auth_enabled(self) -> bool:
        """auth.enabled with "auto" resolved: on when users or a credentials file exist."""
        if self.auth.enabled == "auto":
            return bool(self.users) or bool(self.auth.credentials_file)
        return bool(self.auth.enabled)

    @property
    def store_path(self) -> Path:
        """The SQLite file: store.path, else ``<data_dir>/location.sqlite``."""
        return Path(self.store.path or Path(self.server.data_dir) / "location.sqlite")

    @property
    def flow_token_key_path(self) -> Path:
        """Where a generated flow-token key is kept when outbound.secret is empty."""
        return Path(self.server.data_dir) / "flow-token.key"


# --------------------------------------------------------------------------------------------
# Building


def _build_section(cls: type[Any], name: str, raw: object) -> Any:
    if not isinstance(raw, dict):
        raise _err(name, "must be a table", raw)
    fields = {f.name: f for f in attrs.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"unknown key {_show(f'{name}.{key}')}", key=f"{name}.{key}")
    values = {k: fields[k].metadata["check"](f"{name}.{k}", v) for k, v in raw.items()}
    return cls(**values)


_USER_NAME_RE = re.compile(r'^[^\s"\\:]+$')


def _build_users(raw: object) -> dict[str, UserEntry]:
    if not isinstance(raw, dict):
        raise _err("users", "must be a table of [users.NAME] tables", raw)
    users: dict[str, UserEntry] = {}
    for name, table in raw.items():
        key = f"users.{name}"
        if not isinstance(name, str) or not _USER_NAME_RE.match(name):
            raise ConfigError(
                f"{key}: user name must be non-empty without spaces, quotes, backslashes or ':'",
                key=key,
            )
        entry: UserEntry = _build_section(UserEntry, key, table)
        if not (entry.password or entry.ha1_md5 or entry.ha1_sha256):
            raise ConfigError(
                f"{key}: needs password, ha1_md5 or ha1_sha256", key=f"{key}.password"
            )
        users[name] = entry
    return users


def _validate(cfg: Config) -> None:
    """Cross-field rules; each error names the key to fix."""
    reg = cfg.registrar
    if reg.min_expires > reg.max_expires:
        raise ConfigError(
            f"registrar.min_expires: must be <= registrar.max_expires ({reg.max_expires}), "
            f"got {reg.min_expires}",
            key="registrar.min_expires",
        )
    if not reg.min_expires <= reg.default_expires <= reg.max_expires:
        raise ConfigError(
            f"registrar.default_expires: must be between registrar.min_expires "
            f"({reg.min_expires}) and registrar.max_expires ({reg.max_expires}), "
            f"got {reg.default_expires}",
            key="registrar.default_expires",
        )
    if cfg.transaction.t2 < cfg.transaction.t1:
        raise ConfigError(
            f"transaction.t2: must be >= transaction.t1 ({cfg.transaction.t1:g}), "
            f"got {cfg.transaction.t2:g}",
            key="transaction.t2",
        )
    tls_specs = [s for s in cfg.server.listen if s.needs_tls]
    if tls_specs and not cfg.tls.cert:
        raise ConfigError(
            f"tls.cert: a certificate file is required by listener {_show(str(tls_specs[0]))}",
            key="tls.cert",
        )
    if cfg.tls.key and not cfg.tls.cert:
        raise ConfigError("tls.cert: must be set when tls.key is set", key="tls.cert")
    if cfg.tls.cert and not cfg.tls.key:
        raise ConfigError("tls.key: must be set when tls.cert is set", key="tls.key")
    cl = cfg.cluster
    if cl.enabled and cfg.store.backend != "redis":
        raise ConfigError(
            f'cluster.node_id: a cluster node needs store.backend = "redis" (the bindings all '
            f'nodes share), got store.backend = "{cfg.store.backend}"',
            key="cluster.node_id",
        )
    if cl.heartbeat_ttl <= cl.heartbeat_interval:
        raise ConfigError(
            f"cluster.heartbeat_ttl: must be > cluster.heartbeat_interval ({cl.heartbeat_interval:g}), "
            f"got {cl.heartbeat_ttl:g}",
            key="cluster.heartbeat_ttl",
        )


def config_from_dict(d: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Build and validate a Config from parsed TOML; missing keys take their defaults."""
    try:
        if not isinstance(d, Mapping):
            raise ConfigError(f"the configuration must be a table, got {_show(d)}")
        known = {name: cls for name, cls in _SECTIONS}
        sections: dict[str, Any] = {}
        for name, raw in d.items():
            if name == "users":
                sections["users"] = _build_users(raw)
            elif name in known:
                sections[name] = _build_section(known[name], name, raw)
            else:
                raise ConfigError(f"unknown key {_show(name)}", key=name)
        cfg = Config(**sections)
        _validate(cfg)
    except ConfigError as exc:
        exc.source = source
        raise
    return cfg


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read a TOML file and build the Config; every failure is a ConfigError."""
    source = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file: {exc.strerror or exc}", source=source
        ) from None
    try:
        parsed = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("config file is not valid UTF-8", source=source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", source=source) from None
    return config_from_dict(parsed, source=source)


def default_config() -> Config:
    """The built-in configuration (what ``sipserver run`` uses without -c)."""
    return Config()


def apply_overrides(
    cfg: Config,
    *,
    listen: Sequence[str] | None = None,
    domains: Sequence[str] | None = None,
    data_dir: str | None = None,
    log_level: str | None = None,
    log_format: str | None = None,
    mgmt: str | None = None,
) -> Config:
    """Command-line flags over the file: given lists *replace* the file's lists.

    Values are checked like file values; errors carry ``source="command line"``.
    """
    server_changes: dict[str, Any] = {}
    mgmt_changes: dict[str, Any] = {}
    wanted: list[tuple[dict[str, Any], str, str, object]] = [
        (server_changes, "server", "listen", None if listen is None else list(listen)),
        (server_changes, "server", "domains", None if domains is None else list(domains)),
        (server_changes, "server", "data_dir", data_dir),
        (server_changes, "server", "log_level", log_level),
        (server_changes, "server", "log_format", log_format),
        (mgmt_changes, "mgmt", "listen", mgmt),
    ]
    classes = dict(_SECTIONS)
    try:
        for changes, section, name, value in wanted:
            if value is None:
                continue
            field = attrs.fields_dict(classes[section])[name]
            changes[name] = field.metadata["check"](f"{section}.{name}", value)
        new = attrs.evolve(
            cfg,
            server=attrs.evolve(cfg.server, **server_changes),
            mgmt=attrs.evolve(cfg.mgmt, **mgmt_changes),
        )
        _validate(new)
    except ConfigError as exc:
        exc.source = "command line"
        raise
    return new


# --------------------------------------------------------------------------------------------
# Reference and example, generated from the field metadata


def _section_fields(cls: type[Any]) -> list[tuple[str, _Check, str, object]]:
    """(key, checker, help, default as raw TOML) for each field of a section class."""
    out = []
    for f in attrs.fields(cls):
        check: _Check = f.metadata["check"]
        out.append((f.name, check, f.metadata["help"], check.to_toml(f.default)))
    return out


_SECTION_INTRO = {
    "server": "Sockets, names and logging.",
    "tls": "Certificate material for `tls:` and `wss:` listeners.",
    "registrar": "Registration rules (RFC 3261 §10.3, RFC 5626 §6, RFC 5627).",
    "proxy": "Routing policy (RFC 3261 §16, RFC 5626 §5 and §7).",
    "transaction": "Transaction timers (RFC 3261 §17), in seconds.",
    "limits": "Resource bounds against broken or hostile peers.",
    "auth": "Digest authentication (RFC 3261 §22, RFC 7616) and brute-force bans.",
    "rate_limit": "Per-source-address request rate limit (token bucket).",
    "store": "Where registrations (bindings) are kept.",
    "outbound": "Flow-token keys (RFC 5626 §5.2).",
    "mgmt": "HTTP management API.",
    "nat": "Phones behind NAT that do not do SIP Outbound: server-sent keepalives (docs/nat.md).",
    "media": (
        "Media anchoring through rtpengine (its ng control protocol): browsers (DTLS-SRTP, ICE) "
        "talking to plain RTP phones, and phones behind NAT. Off until `rtpengine` lists one."
    ),
    "cluster": (
        "Several nodes (processes or machines) sharing the bindings in Redis; each node is the "
        "edge for the connections it holds (docs/cluster.md). Off until `node_id` is set."
    ),
    "users": (
        "One `[users.NAME]` table per user, with `password` or precomputed HA1 values "
        "(at least one). HA1 values are computed with the realm the server uses "
        "(`auth.realm`)."
    ),
}


def render_reference() -> str:
    """Markdown reference of every section and key: type, default and help."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m sipserver.config > docs/config.md`; do not edit. -->",
        "",
        "sipserver reads one TOML file (`sipserver run -c FILE`). Every section and key is "
        "optional; an unknown key or an invalid value stops the server with an error naming "
        "the key. `sipserver check-config FILE` validates a file without starting anything. "
        "`examples/sipserver.toml` lists every key with its default.",
        "",
        "Command-line flags of `sipserver run` override the file: `--listen` and `--domain` "
        "replace `server.listen` and `server.domains`; `--data-dir`, `--log-level`, "
        "`--log-format` and `--mgmt` set `server.data_dir`, `server.log_level`, "
        "`server.log_format` and `mgmt.listen`.",
        "",
    ]
    sections: list[tuple[str, type[Any], str]] = [(name, cls, name) for name, cls in _SECTIONS]
    sections.append(("users", UserEntry, "users.NAME"))
    for name, cls, prefix in sections:
        lines += [f"## `[{prefix}]`", "", _SECTION_INTRO[name], ""]
        for key, check, help_text, default in _section_fields(cls):
            default_text = "(none)" if name == "users" else f"`{_toml(default)}`"
            lines += [
                f"### `{prefix}.{key}`",
                "",
                f"- Type: {check.kind}",
                f"- Default: {default_text}",
                "",
                help_text,
                "",
            ]
    return "\n".join(lines).rstrip("\n") + "\n"


def _comment(text: str) -> list[str]:
    return ["# " + line for line in textwrap.wrap(text, 96)]


def render_example() -> str:
    """A TOML file setting every key to its default, each with its help as a comment."""
    lines = [
        "# sipserver configuration: every key, set to its default.",
        "# Reference: docs/config.md. Check a file with `sipserver check-config FILE`.",
        "",
    ]
    for name, cls in _SECTIONS:
        lines += [*_comment(_SECTION_INTRO[name]), f"[{name}]"]
        for key, _check, help_text, default in _section_fields(cls):
            lines += [*_comment(help_text), f"{key} = {_toml(default)}", ""]
    # Users stay commented out: any user turns authentication on (auth.enabled = "auto").
    # Help lines get "## " so that stripping one "# " from the block yields valid TOML.
    lines += [*_comment(_SECTION_INTRO["users"]), "# Uncomment to add a user:", "#"]
    lines.append("# [users.alice]")
    example_values = {"password": "change-me", "ha1_md5": "", "ha1_sha256": ""}
    for key, _check, help_text, _default in _section_fields(UserEntry):
        lines += ["#" + line for line in _comment(help_text)]
        lines.append(f"# {key} = {_toml(example_values[key])}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(render_reference())
