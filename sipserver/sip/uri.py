"""SIP, SIPS and other URIs (RFC 3261 §19.1, §25.1).

Invariants: a parsed URI keeps the exact text it came from (``str(uri)`` gives it back unchanged)
until it is edited with ``replace``/``with_param``/``without_param``, which render a new text.
Parameter names compare case-insensitively and after %XX decoding (RFC 3261 §19.1.4); user parts
are compared after %XX decoding, which is done exactly once (``%25%34%31`` decodes to ``%41``,
never to ``A``: RFC 4475 §3.1.1.3). URIs of other schemes (tel, urn, soap.beep, ...) parse as
``AbsoluteURI`` so the proxy can answer 416 instead of the parser failing. Bad input raises
``ParseError`` and nothing else.

Speed: the common shape (``sip:user@host:port;p=v;flag``, plain characters only) is recognised by
one precompiled regex; anything else takes the careful character-by-character path, which gives
the same result for every input the fast path accepts.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from .errors import ParseError

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
# host: hostname / IPv4 / [IPv6]
_HOST_RE = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?|[A-Za-z0-9])\Z")
_BAD_URI_CHARS = frozenset(' \t\r\n<>"')

# The common shape of a sip/sips URI. Every character class here is a subset of what the careful
# path accepts in the same place, and none contains a character the careful path splits on before
# that place (':' '@' ';' '?' in the user part, '=' and ';' in parameters), so a match gives the
# same fields the careful path would.
_FAST_SIP_RE = re.compile(
    r"(sips?):"
    r"(?:([A-Za-z0-9\-_.!~*'()&=+$,%/]++)@)?"
    r"([A-Za-z0-9][A-Za-z0-9\-.]*+|\[[0-9A-Fa-f:.]++\])"
    r"(?::([0-9]{1,5}+))?"
    r"((?:;[A-Za-z0-9\-_.!~*'()&+$%\[\]/:]++(?:=[A-Za-z0-9\-_.!~*'()&+$%\[\]/:]++)?)*+)\Z"
)


def _unescape(text: str) -> str:
    """Decode %XX escapes once; invalid escapes stay as they are (RFC 4475 esc02)."""
    if "%" not in text:
        return text
    return unquote(text, errors="surrogateescape")


def _pname(name: str) -> str:
    """A parameter name as compared: lower case, escapes decoded (RFC 3261 §19.1.4)."""
    return unquote(name, errors="surrogateescape").lower() if "%" in name else name.lower()


class URI:
    """Common base: every URI has a scheme and renders back to text."""

    __slots__ = ("scheme", "_text")

    scheme: str
    _text: str

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._text!r})"

    @property
    def is_sip(self) -> bool:
        return False


class AbsoluteURI(URI):
    """A URI of a scheme this server does not route (tel, urn, soap.beep...)."""

    __slots__ = ("opaque",)

    def __init__(self, scheme: str, opaque: str, text: str) -> None:
        self.scheme = scheme.lower()
        self.opaque = opaque
        self._text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AbsoluteURI) and self._text == other._text

    def __hash__(self) -> int:
        return hash(self._text)


class SipURI(URI):
    """sip: or sips: URI. ``params`` keeps order and the names as written.

    A URI from the fast parse path splits its parameter text only when ``params`` is first read."""

    __slots__ = ("user", "password", "host", "port", "_params", "_ptext", "headers")

    def __init__(
        self,
        scheme: str,
        user: str | None,
        password: str | None,
        host: str,
        port: int | None,
        params: list[tuple[str, str | None]] | None,
        headers: str | None,
        text: str | None = None,
        *,
        lazy_params: str | None = None,
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host  # IPv6 without brackets
        self.port = port
        self._params: list[tuple[str, str | None]] | None = params
        # ``;name=value;flag`` text already validated by the fast regex, split on first use.
        self._ptext = lazy_params
        self.headers = headers
        self._text = text if text is not None else self._render()

    @property
    def params(self) -> list[tuple[str, str | None]]:
        params = self._params
        if params is None:
            params = []
            if self._ptext:
                for item in self._ptext[1:].split(";"):
                    name, sep, value = item.partition("=")
                    params.append((name, value if sep else None))
            self._params = params
        return params

    @params.setter
    def params(self, value: list[tuple[str, str | None]]) -> None:
        self._params = value

    @property
    def is_sip(self) -> bool:
        return True

    @property
    def secure(self) -> bool:
        return self.scheme == "sips"

    @property
    def host_text(self) -> str:
        """Host as it appears in a URI: IPv6 references in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def hostport(self) -> str:
        return self.host_text if self.port is None else f"{self.host_text}:{self.port}"

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else _unescape(self.user)

    def param(self, name: str) -> str | None:
        """Value of parameter ``name`` (unescaped), '' for a valueless one, None if absent.
        Names match case-insensitively and after %XX decoding (``%6C%72`` is ``lr``)."""
        lname = name.lower()
        for key, value in self.params:
            if _pname(key) == lname:
                return "" if value is None else _unescape(value)
        return None

    def has_param(self, name: str) -> bool:
        lname = name.lower()
        return any(_pname(key) == lname for key, _ in self.params)

    @property
    def transport(self) -> str | None:
        value = self.param("transport")
        return value.lower() if value else None

    @property
    def lr(self) -> bool:
        return self.has_param("lr")

    def _render(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":")
                out.append(self.password)
            out.append("@")
        out.append(self.hostport)
        for key, value in self.params:
            out.append(";")
            out.append(key)
            if value is not None:
                out.append("=")
                out.append(value)
        if self.headers is not None:
            out.append("?")
            out.append(self.headers)
        return "".join(out)

    def replace(self, **changes: object) -> SipURI:
        """A copy with some attributes changed (rendered anew)."""
        fields: dict[str, object] = {
            "scheme": self.scheme,
            "user": self.user,
            "password": self.password,
            "host": self.host,
            "port": self.port,
            "params": list(self.params),
            "headers": self.headers,
        }
        fields.update(changes)
        return SipURI(**fields)  # type: ignore[arg-type]

    def with_param(self, name: str, value: str | None = None) -> SipURI:
        """A copy with parameter ``name`` set (replacing any spelling of it), added last."""
        lname = name.lower()
        params = [(k, v) for k, v in self.params if _pname(k) != lname]
        params.append((name, value))
        return self.replace(params=params)

    def without_param(self, *names: str) -> SipURI:
        lnames = {n.lower() for n in names}
        return self.replace(params=[(k, v) for k, v in self.params if _pname(k) not in lnames])

    @property
    def aor(self) -> str:
        """Address-of-record key: ``user@host`` (user unescaped, host lower-case, port and
        parameters ignored). RFC 3261 §10.3 step 5; the port is ignored by project choice."""
        user = self.user_unescaped
        host = self.host.lower()
        return f"{user}@{host}" if user is not None else host

    def _param_map(self) -> dict[str, str]:
        return {_pname(k): ("" if v is None else _unescape(v).lower()) for k, v in self.params}

    def _header_set(self) -> frozenset[tuple[str, str]] | None:
        if self.headers is None:
            return None
        out = set()
        for item in self.headers.split("&"):
            name, _, value = item.partition("=")
            out.add((_unescape(name).lower(), _unescape(value)))
        return frozenset(out)

    def __eq__(self, other: object) -> bool:
        """RFC 3261 §19.1.4: scheme; user and password after %XX decoding, case-sensitive; host
        case-insensitive; port (absent differs from 5060); parameters present in both must
        match (case-insensitively), and ``user``, ``ttl``, ``method``, ``maddr`` and
        ``transport`` must match even when only one URI has them; ``?headers`` must match."""
        if not isinstance(other, SipURI):
            return NotImplemented
        if self.scheme != other.scheme or self.host.lower() != other.host.lower():
            return False
        if self.user_unescaped != other.user_unescaped or self.port != other.port:
            return False
        if (self.password is None) != (other.password is None):
            return False
        if self.password is not None and other.password is not None:
            if _unescape(self.password) != _unescape(other.password):
                return False
        if self.params or other.params:
            mine, theirs = self._param_map(), other._param_map()
            for name in ("transport", "user", "method", "maddr", "ttl"):
                if mine.get(name) != theirs.get(name):
                    return False
            for name, value in mine.items():
                if name in theirs and theirs[name] != value:
                    return False
        return self._header_set() == other._header_set()

    def __hash__(self) -> int:
        return hash((self.scheme, self.user_unescaped, self.host.lower(), self.port))


def parse_uri(text: str) -> URI:
    """Parse a URI. Raise ParseError(400) when it is malformed."""
    m = _FAST_SIP_RE.match(text)
    if m is not None:
        scheme, user, host, port_text, ptext = m.groups()
        if host[-1] != "-":  # a hostname may not end in '-': let the careful path say so
            if host[0] == "[":
                host = host[1:-1]
            port = None
            if port_text is not None:
                port = int(port_text)
                if port > 65535:
                    raise ParseError(f"malformed URI {text[:80]!r}: bad port {port_text!r}")
            return SipURI(scheme, user, None, host, port, None, None, text, lazy_params=ptext)
    colon = text.find(":")
    if colon <= 0:
        raise ParseError(f"malformed URI {text[:80]!r}: no scheme")
    scheme = text[:colon]
    if not _SCHEME_RE.match(scheme):
        raise ParseError(f"malformed URI {text[:80]!r}: bad scheme")
    if not _BAD_URI_CHARS.isdisjoint(text):
        raise ParseError(f"malformed URI {text[:80]!r}: whitespace, quote or angle bracket inside")
    lscheme = scheme.lower()
    if lscheme not in ("sip", "sips"):
        rest = text[colon + 1 :]
        if not rest:
            raise ParseError(f"malformed URI {text[:80]!r}: empty")
        return AbsoluteURI(lscheme, rest, text)
    return _parse_sip(lscheme, text, text[colon + 1 :])


def parse_sip_uri(text: str) -> SipURI:
    """Parse a URI that must be sip: or sips: (ParseError 416 otherwise)."""
    uri = parse_uri(text)
    if not isinstance(uri, SipURI):
        raise ParseError(f"unsupported URI scheme {uri.scheme!r}", 416)
    return uri


def _parse_sip(scheme: str, text: str, rest: str) -> SipURI:
    user: str | None = None
    password: str | None = None
    # The first unescaped '@' ends the userinfo: '@' is not allowed unescaped in URI
    # parameters or headers (RFC 3261 §25.1), while ';', '?' and ':' may be in the user part
    # (RFC 4475 §3.1.1.2, §3.1.1.9).
    at = rest.find("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        if not userinfo:
            raise ParseError(f"malformed URI {text[:80]!r}: empty user part")
        pcolon = userinfo.find(":")
        if pcolon >= 0:
            user, password = userinfo[:pcolon], userinfo[pcolon + 1 :]
        else:
            user = userinfo
    headers: str | None = None
    q = rest.find("?")
    if q >= 0:
        headers = rest[q + 1 :]
        rest = rest[:q]
    semi = rest.find(";")
    if semi >= 0:
        hostport, ptext = rest[:semi], rest[semi + 1 :]
        params = _split_uri_params(ptext, text)
    else:
        hostport, params = rest, []
    host, port = _split_hostport(hostport, text)
    return SipURI(scheme, user, password, host, port, params, headers, text)


def _split_uri_params(ptext: str, text: str) -> list[tuple[str, str | None]]:
    params: list[tuple[str, str | None]] = []
    for item in ptext.split(";"):
        if not item:
            raise ParseError(f"malformed URI {text[:80]!r}: empty parameter")
        eq = item.find("=")
        if eq >= 0:
            name, value = item[:eq], item[eq + 1 :]
            if not name:
                raise ParseError(f"malformed URI {text[:80]!r}: parameter without a name")
            params.append((name, value))
        else:
            params.append((item, None))
    return params


def _split_hostport(hostport: str, text: str) -> tuple[str, int | None]:
    port: int | None = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ParseError(f"malformed URI {text[:80]!r}: unterminated IPv6 reference")
        host = hostport[: end + 1]
        tail = hostport[end + 1 :]
        if tail:
            if not tail.startswith(":"):
                raise ParseError(f"malformed URI {text[:80]!r}: junk after IPv6 reference")
            port = _port(tail[1:], text)
    else:
        colon = hostport.rfind(":")
        if colon >= 0:
            host, port = hostport[:colon], _port(hostport[colon + 1 :], text)
        else:
            host = hostport
    if not host or not _HOST_RE.match(host):
        raise ParseError(f"malformed URI {text[:80]!r}: bad host {host[:60]!r}")
    if host.startswith("["):
        host = host[1:-1]
    return host, port


def _port(text: str, uri: str) -> int:
    # isascii(): str.isdigit() also accepts digits such as '²' that int() refuses.
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > 65535:
        raise ParseError(f"malformed URI {uri[:80]!r}: bad port {text[:10]!r}")
    return int(text)
