"""Header names and typed header views (RFC 3261 §7.3, §20, §25.1).

Invariants: header names are matched through ``header_key`` (lower case, compact forms expanded);
typed views are built from the raw value text on demand and never change the message. Each view
keeps the raw text of its value (``raw``) so a proxy can forward values it did not edit unchanged.
Splitting a comma-separated header respects quoted strings and angle brackets. Numbers are ASCII
digits only and are never converted with more than 20 significant digits (large values clamp or
fail as each view documents), so no input reaches ``int()``'s limits. Bad input raises
``ParseError`` and nothing else.

Speed: Via and name-addr values of the common shape are recognised by one precompiled regex each;
anything else takes the careful path, which gives the same result for every input the fast
regex accepts.
"""

from __future__ import annotations

import re
from typing import TypeVar

from .errors import ParseError
from .uri import URI, SipURI, parse_uri

# RFC 3261 §7.3.3 compact forms plus the common registered ones.
COMPACT_FORMS: dict[str, str] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "u": "allow-events",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "n": "identity-info",
}

# How this server spells the headers it writes.
CANONICAL_NAMES: dict[str, str] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "flow-timer": "Flow-Timer",
}

# Headers that may appear once only (RFC 3261 §7.3.1; RFC 4475 §3.3.8 multi01).
SINGLE_VALUED = frozenset(
    {"call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type", "expires"}
)

_key_cache: dict[str, str] = {}


def header_key(name: str) -> str:
    """Lower-case name with compact forms expanded: the key headers are matched by."""
    key = _key_cache.get(name)
    if key is None:
        low = name.lower()
        key = COMPACT_FORMS.get(low, low)
        if len(_key_cache) < 4096:
            _key_cache[name] = key
    return key


# Text before a header line's colon -> (name as written without trailing blanks, key), and
# the same text -> key alone (for the parser's loop). Only names that passed ``is_token`` get
# in, so a hit needs no further check, and no cached text contains ':' or starts with a blank.
_name_cache: dict[str, tuple[str, str]] = {}
raw_key_cache: dict[str, str] = {}


def header_name_key(raw_name: str, line: str) -> tuple[str, str]:
    """(name, key) for ``raw_name``, the text before the first colon of header ``line``
    (RFC 3261 §7.3.1: the name is a token, blanks may precede the colon)."""
    hit = _name_cache.get(raw_name)
    if hit is not None:
        return hit
    if not raw_name or len(raw_name) == len(line):
        if not line.strip():
            raise ParseError("empty line inside the header section")
        raise ParseError(f"header line without a colon: {line[:60]!r}")
    name = raw_name.rstrip(" \t")
    if not is_token(name):
        raise ParseError(f"malformed header name {name[:40]!r}")
    hit = (name, header_key(name))
    if len(_name_cache) < 4096:
        _name_cache[raw_name] = hit
        raw_key_cache[raw_name] = hit[1]
    return hit


def unfold(raw: str) -> str:
    """One header line with its continuation lines joined (RFC 3261 §7.3.1): each CRLF plus the
    blanks around it becomes a single space."""
    return " ".join(part.strip() for part in raw.split("\r\n"))


_canonical_cache: dict[str, str] = {}


def canonical_name(key: str) -> str:
    """How this server spells header ``key`` (``record-route`` -> ``Record-Route``)."""
    name = _canonical_cache.get(key)
    if name is None:
        name = CANONICAL_NAMES.get(key)
        if name is None:
            name = "-".join(part.capitalize() for part in key.split("-"))
        if len(_canonical_cache) < 4096:
            _canonical_cache[key] = name
    return name


def is_digits(text: str) -> bool:
    """1*DIGIT in the RFC's sense: ASCII only (``str.isdigit`` also takes '²', which ``int``
    refuses, and other scripts' digits)."""
    return text.isascii() and text.isdigit()


def clamped_int(text: str, cap: int) -> int | None:
    """The value of an all-digit ``text`` capped at ``cap`` (None if not all digits). Leading
    zeros are allowed (RFC 4475 wsinv); a value with more than 20 significant digits is taken as
    ``cap`` without converting it, so huge inputs cost nothing (RFC 4475 scalar02)."""
    if not (text.isdigit() and text.isascii()):
        return None
    if len(text) > 20:
        text = text.lstrip("0")
        if len(text) > 20:
            return cap
    n = int(text) if text else 0
    return n if n < cap else cap


_TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)


def is_token(text: str) -> bool:
    return bool(text) and _TOKEN_CHARS.issuperset(text)


# A comma-separated element of a value without quoted strings: runs of text and <...> (an
# unclosed < runs to the end, as in the character loop of ``split_commas``).
_ANGLE_PARTS = re.compile(r"(?:[^,<]+|<[^>]*>?)+")


def split_commas(value: str) -> list[str]:
    """Split a header value at commas outside quoted strings and <...>; values are stripped."""
    if "," not in value:
        v = value.strip()
        return [v] if v else []
    if '"' not in value:
        if "<" not in value:
            return [v for v in (p.strip() for p in value.split(",")) if v]
        # Route/Record-Route/Path lists: no quoted strings, so only <...> shields a comma. One
        # regular expression instead of the loop below (a call's long Record-Route values made
        # that loop 7% of the server's time, py-spy at 400 calls/s).
        return [v for v in (p.strip() for p in _ANGLE_PARTS.findall(value)) if v]
    parts: list[str] = []
    start = 0
    in_quotes = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif in_angle:
            if ch == ">":
                in_angle = False
        elif ch == "<":
            in_angle = True
        elif ch == ",":
            part = value[start:i].strip()
            if part:
                parts.append(part)
            start = i + 1
        i += 1
    if in_quotes:
        raise ParseError(f"unterminated quoted string in {value[:80]!r}")
    part = value[start:].strip()
    if part:
        parts.append(part)
    return parts


def split_params(text: str, where: str) -> list[tuple[str, str | None]]:
    """Parse ``;name=value;flag`` (the text after the first ';'), quotes respected.

    Names keep their case; values keep quotes. An empty parameter is an error
    (RFC 4475 §3.1.2.1 badinv01)."""
    params: list[tuple[str, str | None]] = []
    if '"' not in text:
        items = text.split(";")
    else:
        items = []
        start = 0
        in_quotes = False
        i = 0
        while i < len(text):
            ch = text[i]
            if in_quotes:
                if ch == "\\":
                    i += 1
                elif ch == '"':
                    in_quotes = False
            elif ch == '"':
                in_quotes = True
            elif ch == ";":
                items.append(text[start:i])
                start = i + 1
            i += 1
        if in_quotes:
            raise ParseError(f"unterminated quoted string in {where} parameters")
        items.append(text[start:])
    for item in items:
        eq = item.find("=")
        if eq >= 0:
            name = item[:eq].strip()
            value = item[eq + 1 :].strip()
            if not name or not value:
                raise ParseError(f"empty parameter name or value in {where}")
            params.append((name, value))
        else:
            name = item.strip()
            if not name:
                raise ParseError(f"empty parameter in {where}")
            params.append((name, None))
    return params


def _find_param(params: list[tuple[str, str | None]], name: str) -> tuple[bool, str | None]:
    """(present, value) of header parameter ``name``; names compare case-insensitively."""
    lname = name.lower()
    for key, value in params:
        if key == lname or key.lower() == lname:
            return True, value
    return False, None


def _param_value(params: list[tuple[str, str | None]], lname: str) -> str | None:
    """Value of the parameter called ``lname`` (given in lower case), None if absent."""
    for key, value in params:
        if key == lname or key.lower() == lname:
            return value
    return None


def unquote_value(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        if "\\" in inner:
            inner = re.sub(r"\\(.)", r"\1", inner, flags=re.S)
        return inner
    return value


def render_params(params: list[tuple[str, str | None]]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


# Header parameters in their common shape: ``;name``, ``;name=value`` or ``;name="quoted"``
# with no whitespace, no escapes inside quotes. Text matching this splits exactly as
# ``split_params`` would split it, so without quotes it can be cut up with plain ``str.split``.
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]"
_FAST_HPARAMS = rf"""((?:;{_TOKEN}++(?:=(?:[A-Za-z0-9\-.!%*_+`'~:\[\]/@]++|"[^"\\]*+"))?)*+)"""
# One parameter of text that matched _FAST_HPARAMS (values are never empty there, so an empty
# second group means "no value").
_FAST_HPARAM_ITEM_RE = re.compile(r''';([^;=]+)(?:=("[^"]*"|[^;]+))?''')


def _split_fast_params(ptext: str) -> list[tuple[str, str | None]]:
    """Split ``;a=b;c`` text that matched ``_FAST_HPARAMS`` (so it cannot be malformed)."""
    params: list[tuple[str, str | None]] = []
    if '"' in ptext:
        for name, value in _FAST_HPARAM_ITEM_RE.findall(ptext):
            params.append((name, value or None))
    else:
        append = params.append
        for item in ptext[1:].split(";"):
            name, sep, value = item.partition("=")
            append((name, value if sep else None))
    return params


# ----------------------------------------------------------------------------------- Via

_VIA_RE = re.compile(
    r"SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9.!%*_+`'~\-]+)\s+"
    r"(\[[0-9A-Fa-f:.]+\]|[^\s;:\[\]]+)(?:\s*:\s*([0-9]+))?\s*(?:;(.*))?\Z",
    re.S,
)
# The common shape: ``SIP/2.0/TCP host:port;branch=...;rport``, single spaces, plain host.
_VIA_FAST_RE = re.compile(
    r"SIP/2\.0/([A-Za-z0-9.!%*_+`'~\-]++) "
    r"([A-Za-z0-9][A-Za-z0-9\-.]*+|\[[0-9A-Fa-f:.]++\])"
    r"(?::([0-9]{1,5}+))?" + _FAST_HPARAMS + r"\Z"
)


class Via:
    """One Via value (RFC 3261 §20.42, RFC 3581 rport)."""

    __slots__ = ("raw", "transport", "host", "port", "params")

    def __init__(
        self, raw: str, transport: str, host: str, port: int | None, params: list[tuple[str, str | None]]
    ) -> None:
        self.raw = raw
        self.transport = transport  # upper case: UDP, TCP, TLS, WS, WSS, SCTP...
        self.host = host  # IPv6 without brackets
        self.port = port
        self.params = params

    @classmethod
    def parse(cls, raw: str) -> Via:
        m = _VIA_FAST_RE.match(raw)
        if m is None:
            return cls._parse_careful(raw)
        transport, host, port_text, ptext = m.groups()
        if host[0] == "[":
            host = host[1:-1]
        port = None
        if port_text is not None:
            port = int(port_text)
            if port > 65535:
                raise ParseError(f"Via port out of range in {raw[:80]!r}")
        return cls(raw, transport.upper(), host, port, _split_fast_params(ptext) if ptext else [])

    @classmethod
    def _parse_careful(cls, raw: str) -> Via:
        m = _VIA_RE.match(raw)
        if m is None:
            raise ParseError(f"malformed Via {raw[:80]!r}")
        transport, host, port_text, ptext = m.groups()
        params = split_params(ptext, "Via") if ptext is not None else []
        if host[0] == "[":
            host = host[1:-1]
        port = None
        if port_text is not None:
            port = int(port_text) if len(port_text) <= 5 else 65536
            if port > 65535:
                raise ParseError(f"Via port out of range in {raw[:80]!r}")
        return cls(raw, transport.upper(), host, port, params)

    def param(self, name: str) -> str | None:
        return _find_param(self.params, name)[1]

    def has_param(self, name: str) -> bool:
        return _find_param(self.params, name)[0]

    @property
    def branch(self) -> str | None:
        return _param_value(self.params, "branch")

    @property
    def received(self) -> str | None:
        return self.param("received")

    @property
    def maddr(self) -> str | None:
        return self.param("maddr")

    @property
    def ttl(self) -> int | None:
        value = self.param("ttl")
        return clamped_int(value, 256) if value else None

    @property
    def rport(self) -> int | None:
        """The filled-in rport value, None when absent or empty (RFC 3581)."""
        value = self.param("rport")
        if not value:
            return None
        port = clamped_int(value, 65536)
        return port if port is not None and port <= 65535 else None

    @property
    def wants_rport(self) -> bool:
        return self.has_param("rport")

    @property
    def sent_by(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def with_params(self, **values: str | None) -> Via:
        """A copy with parameters set (None = valueless); used for received/rport."""
        params = list(self.params)
        for name, value in values.items():
            lname = name.lower()
            for i, (key, _) in enumerate(params):
                if key.lower() == lname:
                    params[i] = (key, value)
                    break
            else:
                params.append((name, value))
        raw = f"SIP/2.0/{self.transport} {self.sent_by}{render_params(params)}"
        return Via(raw, self.transport, self.host, self.port, params)

    def __str__(self) -> str:
        return self.raw

    def __repr__(self) -> str:
        return f"Via({self.raw!r})"


# ------------------------------------------------------------------------- name-addr

_DISPLAY_TOKEN_CHARS = _TOKEN_CHARS | frozenset(" \t")
_LWS_SEMI_RE = re.compile(r"[ \t]*;[ \t]*")

# The common shapes: ``"Quoted" <uri>;p=v``, ``Token Words <uri>;p``, ``<uri>``, and the
# addr-spec ``uri;p=v`` (whose URI cannot hold ';', '?' or '<'); no whitespace but single
# spaces between display words and before '<'. The URI classes are printable ASCII spelled
# out (no \s: a Unicode category test per character is slow, and the careful path decides
# about anything unusual).
_NAME_ADDR_FAST_RE = re.compile(
    rf"""(?:("[^"\\]*+(?:\\.[^"\\]*+)*+") *+|({_TOKEN}++(?: {_TOKEN}++)*+) *+)?<([!#-;=?-~]++)>"""
    + _FAST_HPARAMS
    + r"""\Z|([!#-:=@-~]++)"""
    + _FAST_HPARAMS
    + r"\Z",
    re.S,
)

_NA = TypeVar("_NA", bound="NameAddr")


class NameAddr:
    """name-addr / addr-spec with header parameters: From, To, Contact, Route, Record-Route, Path.

    ``uri_text`` is the URI as written; ``uri`` parses it on first use."""

    __slots__ = ("raw", "display", "uri_text", "params", "bracketed", "_uri")

    def __init__(
        self,
        raw: str,
        display: str | None,
        uri_text: str,
        params: list[tuple[str, str | None]],
        bracketed: bool,
    ) -> None:
        self.raw = raw
        self.display = display
        self.uri_text = uri_text
        self.params = params
        self.bracketed = bracketed
        self._uri: URI | None = None

    @classmethod
    def parse(cls: type[_NA], raw: str, where: str = "header") -> _NA:
        return _name_addr(cls, raw, where)

    @property
    def uri(self) -> URI:
        if self._uri is None:
            self._uri = parse_uri(self.uri_text)
        return self._uri

    @property
    def sip_uri(self) -> SipURI:
        uri = self.uri
        if not isinstance(uri, SipURI):
            raise ParseError(f"expected a sip: or sips: URI, got {uri.scheme}:", 416)
        return uri

    def param(self, name: str) -> str | None:
        return _find_param(self.params, name)[1]

    def has_param(self, name: str) -> bool:
        return _find_param(self.params, name)[0]

    @property
    def tag(self) -> str | None:
        return _param_value(self.params, "tag")

    def render(self, params: list[tuple[str, str | None]] | None = None) -> str:
        """Text of this value with ``params`` (default: its own), URI always in <>."""
        prefix = f"{self.display} " if self.display else ""
        return f"{prefix}<{self.uri_text}>{render_params(self.params if params is None else params)}"

    def with_param(self, name: str, value: str | None) -> NameAddr:
        params = [(k, v) for k, v in self.params if k.lower() != name.lower()]
        params.append((name, value))
        na = NameAddr("", self.display, self.uri_text, params, True)
        na.raw = na.render()
        return na

    def __str__(self) -> str:
        return self.raw

    def __repr__(self) -> str:
        return f"NameAddr({self.raw!r})"


def _parse_name_addr(
    raw: str, where: str
) -> tuple[str | None, str, list[tuple[str, str | None]], bool]:
    """The careful path: (display, uri_text, params, bracketed) of any name-addr/addr-spec."""
    text = raw.strip()
    display: str | None = None
    if text.startswith('"'):
        i = 1
        n = len(text)
        while i < n:
            ch = text[i]
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                break
            i += 1
        else:
            raise ParseError(f"unterminated quoted display name in {where}")
        display = text[: i + 1]
        text = text[i + 1 :].lstrip()
        if not text.startswith("<"):
            raise ParseError(f"display name not followed by <URI> in {where}")
    lt = text.find("<")
    if lt >= 0 and display is None and '"' in text[:lt]:
        # A '<' after a quote is inside a quoted parameter value of an addr-spec (a quoted
        # display name was handled above): ``sip:a@b;p="<"``.
        lt = -1
    if lt >= 0:
        if display is None:
            dn = text[:lt].strip()
            if dn:
                if not _DISPLAY_TOKEN_CHARS.issuperset(dn):
                    raise ParseError(f"display name must be a token or quoted string in {where}")
                display = dn
        gt = text.find(">", lt)
        if gt < 0:
            raise ParseError(f"missing '>' in {where}")
        uri_text = text[lt + 1 : gt]
        if uri_text != uri_text.strip() or not uri_text:
            raise ParseError(f"whitespace or nothing inside <> in {where}")
        if " " in uri_text or "\t" in uri_text:
            # Tolerance: blanks next to a ';' between URI parameters are dropped, so a URI
            # folded before a parameter (as printed in RFC 7118 §8) still parses. Any other
            # blank stays and makes ``uri`` fail (RFC 4475 §3.1.2.14 badaspec).
            uri_text = _LWS_SEMI_RE.sub(";", uri_text)
        rest = text[gt + 1 :].strip()
        bracketed = True
    else:
        # addr-spec form: the URI ends at the first ';' and cannot carry '?headers'
        # (RFC 3261 §20.10; RFC 4475 §3.1.2.13 regbadct).
        semi = text.find(";")
        if semi >= 0:
            uri_text, rest = text[:semi].strip(), text[semi:]
        else:
            uri_text, rest = text, ""
        if "?" in uri_text:
            raise ParseError(f"URI with headers must be enclosed in <> in {where}")
        if not uri_text or any(c in uri_text for c in ' \t"<>'):
            raise ParseError(f"malformed address in {where}")
        bracketed = False
    if rest:
        if not rest.startswith(";"):
            raise ParseError(f"junk after address in {where}: {rest[:40]!r}")
        params = split_params(rest[1:], where)
    else:
        params = []
    return display, uri_text, params, bracketed


def _name_addr(cls: type[_NA], raw: str, where: str) -> _NA:
    """NameAddr.parse for any subclass; Contact.parse calls it directly (a plain function, so
    the mypyc build needs no ``super()`` inside a classmethod)."""
    m = _NAME_ADDR_FAST_RE.match(raw)
    if m is None:
        return cls(raw, *_parse_name_addr(raw, where))
    quoted, token, uri_text, ptext, spec, spec_ptext = m.groups()
    bracketed = spec is None
    if not bracketed:
        uri_text, ptext = spec, spec_ptext
    return cls(raw, quoted or token, uri_text, _split_fast_params(ptext) if ptext else [], bracketed)


_Q_RE = re.compile(r"[0-9]{1,5}(?:\.[0-9]{0,5})?\Z")


class Contact(NameAddr):
    """A Contact value; ``star`` for the ``*`` wildcard (RFC 3261 §10.2.2)."""

    __slots__ = ("star",)

    def __init__(
        self,
        raw: str,
        display: str | None,
        uri_text: str,
        params: list[tuple[str, str | None]],
        bracketed: bool,
        star: bool = False,
    ) -> None:
        self.raw = raw
        self.display = display
        self.uri_text = uri_text
        self.params = params
        self.bracketed = bracketed
        self._uri = None
        self.star = star

    @classmethod
    def parse(cls, raw: str, where: str = "Contact") -> Contact:
        if "*" in raw and raw.strip() == "*":
            return cls(raw, None, "*", [], False, star=True)
        return _name_addr(cls, raw, where)  # __init__ sets ``star`` False

    @property
    def expires(self) -> int | None:
        """The expires parameter; values beyond 2^32-1 are clamped (RFC 4475 scalar02)."""
        value = self.param("expires")
        if value is None:
            return None
        value = unquote_value(value)
        n = clamped_int(value, 2**32 - 1)
        if n is None:
            raise ParseError(f"Contact expires is not a number: {value[:20]!r}")
        return n

    @property
    def q(self) -> float:
        """The q parameter, 1.0 when absent; a value outside 0..1 or not a plain decimal
        number is a ParseError (RFC 3261 §20.10 qvalue)."""
        value = self.param("q")
        if value is None:
            return 1.0
        if not _Q_RE.match(value):
            raise ParseError(f"Contact q is not a number: {value[:20]!r}")
        q = float(value)
        if not 0.0 <= q <= 1.0:
            raise ParseError(f"Contact q out of range 0..1: {value[:20]!r}")
        return q

    @property
    def instance(self) -> str | None:
        """``+sip.instance`` exactly as sent (quotes and angle brackets included)."""
        return self.param("+sip.instance")

    @property
    def instance_id(self) -> str | None:
        """The instance URN without quotes and brackets, lower-cased for comparison
        (RFC 5626 §4.1; OB-GR-05 compares the urn:uuid form case-insensitively)."""
        value = self.instance
        if value is None:
            return None
        value = unquote_value(value).strip()
        if value.startswith("<") and value.endswith(">"):
            value = value[1:-1]
        return value.lower() or None

    @property
    def reg_id_text(self) -> str | None:
        return self.param("reg-id")

    @property
    def reg_id(self) -> int | None:
        """reg-id if valid (1..2^31-1, RFC 5626 §11.2 / OB-REG-17), else None."""
        value = self.param("reg-id")
        if value is None:
            return None
        n = clamped_int(value, 2**31)
        return n if n is not None and 1 <= n <= 2**31 - 1 else None


# ------------------------------------------------------------------------------ CSeq

_CSEQ_FAST_RE = re.compile(rf"([0-9]{{1,9}}) ({_TOKEN}++)\Z")


class CSeq:
    """CSeq (RFC 3261 §20.16): a sequence number below 2^32 and a method token."""

    __slots__ = ("seq", "method")

    def __init__(self, seq: int, method: str) -> None:
        self.seq = seq
        self.method = method

    @classmethod
    def parse(cls, raw: str) -> CSeq:
        m = _CSEQ_FAST_RE.match(raw)
        if m is not None:
            return cls(int(m[1]), m[2])
        parts = raw.split()
        if len(parts) != 2:
            raise ParseError(f"malformed CSeq {raw[:60]!r}")
        seq = clamped_int(parts[0], 2**32)
        if seq is None:
            raise ParseError(f"malformed CSeq {raw[:60]!r}")
        if seq > 2**32 - 1:
            raise ParseError("CSeq number exceeds 2^32-1")
        if not is_token(parts[1]):
            raise ParseError(f"malformed CSeq method {parts[1][:30]!r}")
        return cls(seq, parts[1])

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"

    def __repr__(self) -> str:
        return f"CSeq({self.seq}, {self.method!r})"


def parse_option_tags(values: list[str]) -> frozenset[str]:
    """Require / Supported / Proxy-Require / Unsupported: a set of lower-case option tags."""
    tags: set[str] = set()
    for value in values:
        for tag in value.split(","):
            tag = tag.strip()
            if tag:
                tags.add(tag.lower())
    return frozenset(tags)
