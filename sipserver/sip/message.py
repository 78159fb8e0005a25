"""SIP messages: requests and responses with a lazily-viewed, edit-preserving header list.

Invariants:
- ``headers`` is the ordered list of header lines as received; each ``Header`` keeps the exact
  text of its line (``raw``, folding included) until it is edited. Serialising writes the untouched
  lines byte for byte, so a proxy that adds a Via, pops a Route and decrements Max-Forwards leaves
  every other byte of the message as it was.
- A parsed message makes its ``Header`` objects only when ``headers`` is first read; until then
  it answers from an index built by the parser, and while nothing is edited (and ``headers``
  was never handed out) ``to_bytes`` returns the received bytes (plus a Content-Length when
  there was none).
- Typed views (``vias``, ``cseq``, ``contacts``...) are built from header values on first use and
  cached; any edit drops the cache. A malformed header seen through a view raises ``ParseError``
  (the runtime answers 400), so headers a request never needs are never parsed. The same holds
  for the Request-URI: ``Request.uri`` parses ``uri_text`` on first use.
- Edits go through the methods here (``add_header``, ``set_header``, ``pop_first_value``...),
  which drop the index and the view cache; code that changes ``headers`` in place must call
  ``_changed()`` itself.
- Text is decoded from UTF-8 with ``surrogateescape``: any byte sequence round-trips.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import ParseError
from .headers import (
    Contact,
    CSeq,
    NameAddr,
    Via,
    canonical_name,
    clamped_int,
    header_key,
    header_name_key,
    parse_option_tags,
    raw_key_cache,
    split_commas,
    unfold,
)
from .uri import URI, parse_uri

ENC = "utf-8"
ERRORS = "surrogateescape"


def _split_line(raw: str) -> tuple[str, str, str]:
    """(name as written, key, value stripped) of one raw header line the parser accepted."""
    line = unfold(raw) if "\r\n" in raw else raw
    name, _, value = line.partition(": ")
    if name not in raw_key_cache:  # no ": " after the name (see the parser's _index)
        name, _, value = line.partition(":")
    name, key = header_name_key(name, line)  # a cache hit for every line the parser saw
    return name, key, value.strip()


class Header:
    """One header line. ``raw`` is the line as received (None once edited or when new)."""

    __slots__ = ("name", "key", "value", "raw")

    def __init__(self, name: str, key: str, value: str, raw: str | None = None) -> None:
        self.name = name
        self.key = key
        self.value = value
        self.raw = raw

    def line(self) -> str:
        return self.raw if self.raw is not None else f"{self.name}: {self.value}"

    def __repr__(self) -> str:
        return f"Header({self.name!r}, {self.value!r})"


# The ``_cache`` of every frozen message (see ``Message.freeze``).
_NO_CACHE: dict[str, Any] = {}


class Message:
    """Common part of requests and responses.

    A parsed message holds its raw header lines and a name -> values index; the ``Header``
    objects of ``headers`` are made on first use, and until then (and until any edit)
    ``to_bytes`` returns the received header bytes as they were. The views every message
    needs (Via, CSeq, From, To, Contact) are cached in slots of their own, the rest in
    ``_cache``."""

    __slots__ = (
        "_headers", "_lines", "_keys", "_first", "_more", "_head", "body", "_cache",
        "_vias", "_cseq", "_from", "_to", "_contacts", "_frozen",
    )

    def __init__(self, headers: list[Header], body: bytes = b"") -> None:
        self._init_state(headers, body)

    def _init_state(self, headers: list[Header] | None, body: bytes) -> None:
        """Every slot of ``Message`` in one place (``freeze`` resets them all; the parser's
        ``Request._parsed`` / ``Response._parsed`` then mark the headers as not made yet)."""
        self._headers = headers
        # Set by the parser: the raw header lines (continuations joined); the index (key ->
        # value of its first line, and key -> values of all its lines for the keys that have
        # several lines, None when none has); the received start line plus header lines.
        # Never changed in place (edits make a new list), so copies share them. ``_first``
        # None: not built yet.
        self._lines: Sequence[str] | None = None
        self._keys: Sequence[str] | None = None  # the key of each of ``_lines``, same order
        self._first: dict[str, str] | None = None
        self._more: dict[str, list[str]] | None = None
        self._head: bytes | None = None
        self.body = body
        self._cache: dict[str, Any] = {}
        self._vias: list[Via] | None = None
        self._cseq: CSeq | None = None
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None
        self._contacts: list[Contact] | None = None
        # Set by ``freeze``: the whole message as bytes, and nothing else kept.
        self._frozen: bytes | None = None

    @property
    def headers(self) -> list[Header]:
        """The header lines in order. Handing the list out means it may be changed in place,
        so from here on serialising walks the list instead of reusing the received bytes."""
        if self._frozen is not None:
            self._thaw()
        hdrs = self._headers
        if hdrs is None:
            # The parser accepted these lines, so the name lookups cannot fail.
            hdrs = [Header(*_split_line(raw), raw) for raw in self._lines or ()]
            self._headers = hdrs
            self._lines = self._keys = None
        self._head = None
        return hdrs

    @headers.setter
    def headers(self, value: list[Header]) -> None:
        self._frozen = None
        self._headers = value
        self._lines = self._keys = None
        self._changed()

    def header_count(self) -> int:
        """Number of header lines, without making ``Header`` objects (limits check)."""
        if self._frozen is not None:
            self._thaw()
        if self._headers is None and self._lines is not None:
            return len(self._lines)
        return len(self.headers)

    # ------------------------------------------------------------------ raw access
    def _build_index(self) -> dict[str, str]:
        """Index the header list (after edits, or for a message built from headers), from the
        raw lines when no ``Header`` objects were made (``replace_top_via`` edits them)."""
        if self._frozen is not None:
            self._thaw()
        first: dict[str, str] = {}
        more: dict[str, list[str]] | None = None
        if self._headers is None:
            pairs = [_split_line(line)[1:] for line in self._lines or ()]
        else:
            pairs = [(h.key, h.value) for h in self._headers]
        for key, value in pairs:
            if key in first:
                if more is None:
                    more = {}
                lst = more.get(key)
                if lst is None:
                    more[key] = [first[key], value]
                else:
                    lst.append(value)
            else:
                first[key] = value
        self._first = first
        self._more = more
        return first

    def _all(self, key: str) -> Sequence[str]:
        """The values of every line of header ``key`` (lower-case, expanded), in order."""
        first = self._first
        if first is None:
            first = self._build_index()
        value = first.get(key)
        if value is None:
            return ()
        more = self._more
        if more is not None:
            lst = more.get(key)
            if lst is not None:
                return lst
        return (value,)

    def header(self, name: str) -> str | None:
        """Value of the first line of header ``name`` (compact forms and case ignored)."""
        first = self._first
        if first is None:
            first = self._build_index()
        return first.get(header_key(name))

    def header_lines(self, name: str) -> list[str]:
        """Values of every line of header ``name``, in order."""
        return list(self._all(header_key(name)))

    def header_values(self, name: str) -> list[str]:
        """Every comma-separated value of header ``name`` over all its lines."""
        out: list[str] = []
        for value in self._all(header_key(name)):
            out.extend(split_commas(value))
        return out

    def has_header(self, name: str) -> bool:
        first = self._first
        if first is None:
            first = self._build_index()
        return header_key(name) in first

    def _changed(self, key: str | None = None) -> None:
        """Drop what an edit made stale: always the index and the received bytes; the typed
        views only of header ``key`` (all of them when ``key`` is None)."""
        self._first = self._more = None
        self._head = None
        if key is None:
            self._cache.clear()
            self._vias = self._cseq = self._from = self._to = None
            self._contacts = None
            return
        self._cache.pop(key, None)
        if key == "via":
            self._vias = None
        elif key == "cseq":
            self._cseq = None
        elif key == "from":
            self._from = None
        elif key == "to":
            self._to = None
        elif key == "contact":
            self._contacts = None

    def add_header(self, name: str, value: str, *, top: bool = False) -> None:
        """Add a header line. ``top``: before the first line of the same header (Via,
        Record-Route), else after the last one, else at the end of the header section."""
        key = header_key(name)
        hdr = Header(canonical_name(key) if name.lower() == key else name, key, value)
        positions = [i for i, h in enumerate(self.headers) if h.key == key]
        if positions:
            self.headers.insert(positions[0] if top else positions[-1] + 1, hdr)
        elif top and key == "via":
            self.headers.insert(0, hdr)
        else:
            self.headers.append(hdr)
        self._changed()

    def set_header(self, name: str, value: str) -> None:
        """Replace every line of ``name`` by one line with ``value`` (at the first position)."""
        key = header_key(name)
        for i, h in enumerate(self.headers):
            if h.key == key:
                self.headers[i] = Header(h.name, key, value)
                self.headers[i + 1 :] = [x for x in self.headers[i + 1 :] if x.key != key]
                self._changed()
                return
        self.add_header(name, value)

    def remove_header(self, name: str) -> None:
        key = header_key(name)
        self.headers = [h for h in self.headers if h.key != key]
        self._changed()

    def pop_first_value(self, name: str) -> str | None:
        """Remove the first comma-separated value of header ``name`` (Route pop, Via pop).
        Lines of that header holding no value at all are removed on the way."""
        key = header_key(name)
        headers = self.headers
        i = 0
        while i < len(headers):
            h = headers[i]
            if h.key != key:
                i += 1
                continue
            values = split_commas(h.value)
            if not values:
                del headers[i]
                self._changed()
                continue
            first = values[0]
            if len(values) == 1:
                del headers[i]
            else:
                headers[i] = Header(h.name, key, ", ".join(values[1:]))
            self._changed()
            return first
        return None

    def replace_first_value(self, name: str, value: str) -> None:
        """Replace the first comma-separated value of header ``name`` (top Via edits)."""
        key = header_key(name)
        for i, h in enumerate(self.headers):
            if h.key == key:
                values = split_commas(h.value)
                if not values:
                    continue
                values[0] = value
                self.headers[i] = Header(h.name, key, ", ".join(values))
                self._changed(key)
                return
        raise KeyError(name)

    def replace_top_via(self, via: Via) -> None:
        """Replace the first Via value by ``via`` (RFC 3261 §18.2.1 received/rport).

        Every request gets this edit, so on a message whose ``Header`` objects were never made
        it edits the raw line list (a copy: lists are shared with copies) and keeps every other
        line, the index of the other headers and the other views; ``to_bytes`` then joins the
        lines instead of reusing the received bytes."""
        if self._frozen is not None:
            self._thaw()
        lines = self._lines
        keys = self._keys
        if self._headers is not None or lines is None or keys is None:  # built from Headers
            self.replace_first_value("via", via.raw)
            vias = self._vias = list(self.vias)
            vias[0] = via
            return
        skipped = False
        for i, key in enumerate(keys):
            if key != "via":
                continue
            name, key, value = _split_line(lines[i])
            values = split_commas(value)
            if not values:
                skipped = True
                continue
            values[0] = via.raw
            joined = ", ".join(values)
            lines = list(lines)
            lines[i] = f"{name}: {joined}"
            self._lines = lines
            self._head = None
            first, more = self._first, self._more
            if first is None or skipped:
                self._first = self._more = None  # rebuilt from the lines on next use
            else:
                # The index is shared with copies too: patch copies of it.
                first = self._first = dict(first)
                first["via"] = joined
                if more is not None and "via" in more:
                    more = self._more = dict(more)
                    more["via"] = [joined, *more["via"][1:]]
            old_vias = self._vias
            if old_vias is not None:
                vias = self._vias = list(old_vias)
                vias[0] = via
            return
        raise KeyError("via")

    def copy_header_lines(self, keys: Sequence[str]) -> list[Header]:
        """New ``Header`` objects for the lines of the headers ``keys`` (lower-case, expanded),
        grouped in the order of ``keys`` and in message order within a group, each line kept
        as received. Does not make ``Header`` objects for the other lines."""
        if self._frozen is not None:
            self._thaw()
        groups: dict[str, list[Header]] = {k: [] for k in keys}
        if self._headers is not None or self._lines is None:
            for h in self.headers:
                g = groups.get(h.key)
                if g is not None:
                    g.append(Header(h.name, h.key, h.value, h.raw))
        else:
            lines = self._lines
            line_keys = self._keys
            assert line_keys is not None  # set wherever _lines is
            for i, key in enumerate(line_keys):
                g = groups.get(key)
                if g is not None:
                    raw = lines[i]
                    name, key, value = _split_line(raw)
                    g.append(Header(name, key, value, raw))
        if len(groups) == 1:
            return groups[keys[0]]
        out: list[Header] = []
        for g in groups.values():
            out.extend(g)
        return out

    def freeze(self) -> None:
        """Keep nothing but the serialised bytes (``to_bytes`` returns them as they are); any
        other use parses them again first (``_thaw``).

        A server transaction keeps its request and its final response for 32 s (timer J, RFC
        3261 §17.2.2) only to answer retransmissions with the same bytes. Over UDP at 3,000
        REGISTERs a second their header lines, index and received bytes were ~6 KB a
        transaction, over 500 MB in all (docs/performance.md)."""
        if self._frozen is not None:
            return
        data = self.to_bytes()
        self._init_state(None, self.body)
        self._cache = _NO_CACHE  # never written while frozen: every reader thaws first
        self._frozen = data

    def _thaw(self) -> None:
        """Undo ``freeze``: the header lines and index from the bytes, by the parser."""
        from .parser import parse_message  # the parser builds messages: imported late

        data = self._frozen
        assert data is not None
        twin = parse_message(data)
        self._frozen = None
        self._lines, self._keys = twin._lines, twin._keys
        self._first, self._more = twin._first, twin._more
        self._head = twin._head
        self.body = twin.body
        self._cache = {}

    # ------------------------------------------------------------------ typed views
    def _single(self, key: str) -> str:
        first = self._first
        if first is None:
            first = self._build_index()
        value = first.get(key)
        if value is None:
            raise ParseError(f"missing {canonical_name(key)} header")
        return value

    def _values(self, key: str) -> list[str]:
        """``header_values`` for a key that is already lower-case and expanded."""
        first = self._first
        if first is None:
            first = self._build_index()
        value = first.get(key)
        if value is None:
            return []
        more = self._more
        if more is None or key not in more:  # the common case: one line
            if "," not in value:
                value = value.strip()
                return [value] if value else []
            return split_commas(value)
        out: list[str] = []
        lst = more[key]
        for value in lst:
            value = value.strip()
            if "," in value:
                out.extend(split_commas(value))
            elif value:
                out.append(value)
        return out

    @property
    def vias(self) -> list[Via]:
        vias = self._vias
        if vias is None:
            vias = self._vias = list(map(Via.parse, self._values("via")))
        return vias

    @property
    def top_via(self) -> Via:
        vias = self._vias
        if vias is None:
            vias = self.vias
        if not vias:
            raise ParseError("missing Via header")
        return vias[0]

    @property
    def cseq(self) -> CSeq:
        cseq = self._cseq
        if cseq is None:
            cseq = self._cseq = CSeq.parse(self._single("cseq"))
        return cseq

    @property
    def call_id(self) -> str:
        return self._single("call-id").strip()

    @property
    def from_(self) -> NameAddr:
        na = self._from
        if na is None:
            na = self._from = NameAddr.parse(self._single("from"), "From")
        return na

    @property
    def to(self) -> NameAddr:
        na = self._to
        if na is None:
            na = self._to = NameAddr.parse(self._single("to"), "To")
        return na

    @property
    def from_tag(self) -> str | None:
        na = self._from
        return (na if na is not None else self.from_).tag

    @property
    def to_tag(self) -> str | None:
        na = self._to
        return (na if na is not None else self.to).tag

    @property
    def contacts(self) -> list[Contact]:
        contacts = self._contacts
        if contacts is None:
            contacts = self._contacts = list(map(Contact.parse, self._values("contact")))
        return contacts

    def _addr_list(self, key: str) -> list[NameAddr]:
        lst: list[NameAddr] | None = self._cache.get(key)
        if lst is None:
            where = canonical_name(key)
            lst = [NameAddr.parse(v, where) for v in self._values(key)]
            self._cache[key] = lst
        return lst

    @property
    def routes(self) -> list[NameAddr]:
        return self._addr_list("route")

    @property
    def record_routes(self) -> list[NameAddr]:
        return self._addr_list("record-route")

    @property
    def paths(self) -> list[NameAddr]:
        return self._addr_list("path")

    def _int(self, key: str, limit: int) -> int | None:
        value = self.header(key)
        if value is None:
            return None
        value = value.strip()
        n = clamped_int(value, limit)
        if n is None:
            raise ParseError(f"{canonical_name(key)} is not a number: {value[:20]!r}")
        return n

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards, leading zeros allowed (RFC 4475 wsinv), clamped to 2^32-1."""
        return self._int("max-forwards", 2**32 - 1)

    @property
    def expires(self) -> int | None:
        """Expires header, clamped to 2^32-1 (RFC 4475 scalar02 wants no wrap-around)."""
        return self._int("expires", 2**32 - 1)

    @property
    def flow_timer(self) -> int | None:
        return self._int("flow-timer", 2**32 - 1)

    def _tags(self, key: str) -> frozenset[str]:
        tags: frozenset[str] | None = self._cache.get(key)
        if tags is None:
            tags = parse_option_tags(self.header_lines(key))
            self._cache[key] = tags
        return tags

    @property
    def supported(self) -> frozenset[str]:
        return self._tags("supported")

    @property
    def require(self) -> frozenset[str]:
        return self._tags("require")

    @property
    def proxy_require(self) -> frozenset[str]:
        return self._tags("proxy-require")

    # ------------------------------------------------------------------ output
    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialise. Untouched header lines are written as received; Content-Length is
        added when missing (a UDP message without one may leave over a stream)."""
        if self._frozen is not None:
            return self._frozen
        head = self._head
        if head is not None:
            # Nothing was edited: the received bytes are the serialisation.
            if self.has_header("content-length"):
                return b"".join((head, b"\r\n\r\n", self.body))
            return b"".join(
                (head, b"\r\nContent-Length: ", str(len(self.body)).encode(), b"\r\n\r\n", self.body)
            )
        lines = [self.start_line()]
        append = lines.append
        if self._headers is None and self._lines is not None:
            lines.extend(self._lines)
        else:
            for h in self.headers:
                raw = h.raw
                append(raw if raw is not None else f"{h.name}: {h.value}")
        if not self.has_header("content-length"):
            lines.append(f"Content-Length: {len(self.body)}")
        lines.append("")
        lines.append("")
        head = "\r\n".join(lines).encode(ENC, ERRORS)
        return head + self.body if self.body else head

    def copy(self) -> Message:
        raise NotImplementedError

    def _copy_headers_to(self, other: Message) -> None:
        if self._frozen is not None:
            self._thaw()
        if self._headers is None:
            # Rows, index and received bytes are never changed in place: share them.
            other._headers = None
            other._lines = self._lines
            other._keys = self._keys
            other._first = self._first
            other._more = self._more
            other._head = self._head
        else:
            other._headers = [Header(h.name, h.key, h.value, h.raw) for h in self._headers]


class Request(Message):
    __slots__ = ("method", "uri_text", "version", "_start", "_uri")

    def __init__(
        self,
        method: str,
        uri: str | URI,
        headers: list[Header] | None = None,
        body: bytes = b"",
        *,
        version: str = "SIP/2.0",
        start: str | None = None,
    ) -> None:
        super().__init__(headers if headers is not None else [], body)
        self.method = method
        if isinstance(uri, str):
            self.uri_text = uri
            self._uri: URI | None = None
        else:
            self.uri_text = str(uri)
            self._uri = uri
        self.version = version
        self._start = start

    @classmethod
    def _parsed(cls, method: str, uri_text: str, start: str) -> Request:
        """A request as the parser starts it: no headers yet, start line as received."""
        req = cls(method, uri_text, None, b"", start=start)
        req._headers = None
        return req

    @property
    def uri(self) -> URI:
        """Request-URI, parsed on first use (ParseError 400 if malformed)."""
        if self._uri is None:
            self._uri = parse_uri(self.uri_text)
        return self._uri

    @uri.setter
    def uri(self, value: URI) -> None:
        self._uri = value
        self.uri_text = str(value)
        self._start = None
        self._head = None

    def start_line(self) -> str:
        if self._start is not None:
            return self._start
        return f"{self.method} {self.uri_text} {self.version}"

    def freeze(self) -> None:
        super().freeze()
        self._uri = None

    def copy(self) -> Request:
        """A copy whose header list can be edited without touching this one."""
        req = Request(self.method, self.uri_text, None, self.body, version=self.version, start=self._start)
        self._copy_headers_to(req)
        req._uri = self._uri
        return req

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri_text}>"


class Response(Message):
    __slots__ = ("status", "reason", "version", "_start")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: list[Header] | None = None,
        body: bytes = b"",
        *,
        version: str = "SIP/2.0",
        start: str | None = None,
    ) -> None:
        super().__init__(headers if headers is not None else [], body)
        self.status = status
        self.reason = reason
        self.version = version
        self._start = start

    @classmethod
    def _parsed(cls, status: int, reason: str, start: str) -> Response:
        """A response as the parser starts it: no headers yet, status line as received."""
        resp = cls(status, reason, None, b"", start=start)
        resp._headers = None
        return resp

    def start_line(self) -> str:
        if self._start is not None:
            return self._start
        return f"{self.version} {self.status} {self.reason}"

    def copy(self) -> Response:
        """A copy whose header list can be edited without touching this one."""
        resp = Response(self.status, self.reason, None, self.body, version=self.version, start=self._start)
        self._copy_headers_to(resp)
        return resp

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"
