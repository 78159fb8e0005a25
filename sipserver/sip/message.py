"""SIP messages: requests and responses with a lazily-viewed, edit-preserving header list.

Invariants:
- ``headers`` is the ordered list of header lines as received; each ``Header`` keeps the exact
  text of its line (``raw``, folding included) until it is edited. Serialising writes the untouched
  lines byte for byte, so a proxy that adds a Via, pops a Route and decrements Max-Forwards leaves
  every other byte of the message as it was.
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
    parse_option_tags,
    split_commas,
)
from .uri import URI, parse_uri

ENC = "utf-8"
ERRORS = "surrogateescape"


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


class Message:
    """Common part of requests and responses.

    A parsed message holds its header lines as compact rows and a name -> values index; the
    ``Header`` objects of ``headers`` are made on first use, and until then (and until any
    edit) ``to_bytes`` returns the received header bytes as they were."""

    __slots__ = ("_headers", "_rows", "_vindex", "_head", "body", "_cache", "_index")

    def __init__(self, headers: list[Header], body: bytes = b"") -> None:
        self._headers: list[Header] | None = headers
        # Set by the parser: ((name, key), value, raw) per line, the values of each key in
        # order, and the received start line plus header lines. Never changed in place, so a
        # copy may share them.
        self._rows: list[tuple[tuple[str, str], str, str]] | None = None
        self._vindex: dict[str, list[str]] | None = None
        self._head: bytes | None = None
        self.body = body
        self._cache: dict[str, Any] = {}
        self._index: dict[str, list[Header]] | None = None

    @property
    def headers(self) -> list[Header]:
        """The header lines in order. Handing the list out means it may be changed in place,
        so from here on serialising walks the list instead of reusing the received bytes."""
        hdrs = self._headers
        if hdrs is None:
            hdrs = [Header(hit[0], hit[1], value, raw) for hit, value, raw in self._rows or ()]
            self._headers = hdrs
            self._rows = None
        self._head = None
        return hdrs

    @headers.setter
    def headers(self, value: list[Header]) -> None:
        self._headers = value
        self._rows = None
        self._changed()

    # ------------------------------------------------------------------ raw access
    def _vidx(self) -> dict[str, list[str]]:
        """Header key -> the values of its lines, in order."""
        vindex = self._vindex
        if vindex is None:
            vindex = {}
            for h in self.headers:
                lst = vindex.get(h.key)
                if lst is None:
                    vindex[h.key] = [h.value]
                else:
                    lst.append(h.value)
            self._vindex = vindex
        return vindex

    def _idx(self) -> dict[str, list[Header]]:
        """Header key -> its ``Header`` lines (makes the ``Header`` objects)."""
        index = self._index
        if index is None:
            index = {}
            for h in self.headers:
                lst = index.get(h.key)
                if lst is None:
                    index[h.key] = [h]
                else:
                    lst.append(h)
            self._index = index
        return index

    def header(self, name: str) -> str | None:
        """Value of the first line of header ``name`` (compact forms and case ignored)."""
        lst = self._vidx().get(header_key(name))
        return lst[0] if lst else None

    def header_lines(self, name: str) -> list[str]:
        """Values of every line of header ``name``, in order."""
        return list(self._vidx().get(header_key(name), ()))

    def header_values(self, name: str) -> list[str]:
        """Every comma-separated value of header ``name`` over all its lines."""
        out: list[str] = []
        for value in self._vidx().get(header_key(name), ()):
            out.extend(split_commas(value))
        return out

    def has_header(self, name: str) -> bool:
        return header_key(name) in self._vidx()

    def _changed(self) -> None:
        self._index = None
        self._vindex = None
        self._head = None
        self._cache.clear()

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
                self._changed()
                return
        raise KeyError(name)

    # ------------------------------------------------------------------ typed views
    def _single(self, key: str) -> str:
        vindex = self._vindex
        lst = (vindex if vindex is not None else self._vidx()).get(key)
        if not lst:
            raise ParseError(f"missing {canonical_name(key)} header")
        return lst[0]

    def _values(self, key: str) -> list[str]:
        """``header_values`` for a key that is already lower-case and expanded."""
        vindex = self._vindex
        lst = (vindex if vindex is not None else self._vidx()).get(key)
        if not lst:
            return []
        out: list[str] = []
        for value in lst:
            value = value.strip()
            if "," in value:
                out.extend(split_commas(value))
            elif value:
                out.append(value)
        return out

    @property
    def vias(self) -> list[Via]:
        vias: list[Via] | None = self._cache.get("via")
        if vias is None:
            parse = Via.parse
            vias = [parse(v) for v in self._values("via")]
            self._cache["via"] = vias
        return vias

    @property
    def top_via(self) -> Via:
        vias = self.vias
        if not vias:
            raise ParseError("missing Via header")
        return vias[0]

    @property
    def cseq(self) -> CSeq:
        cseq: CSeq | None = self._cache.get("cseq")
        if cseq is None:
            cseq = CSeq.parse(self._single("cseq"))
            self._cache["cseq"] = cseq
        return cseq

    @property
    def call_id(self) -> str:
        return self._single("call-id").strip()

    def _name_addr(self, key: str) -> NameAddr:
        na: NameAddr | None = self._cache.get(key)
        if na is None:
            na = NameAddr.parse(self._single(key), canonical_name(key))
            self._cache[key] = na
        return na

    @property
    def from_(self) -> NameAddr:
        return self._name_addr("from")

    @property
    def to(self) -> NameAddr:
        return self._name_addr("to")

    @property
    def from_tag(self) -> str | None:
        return self.from_.tag

    @property
    def to_tag(self) -> str | None:
        return self.to.tag

    @property
    def contacts(self) -> list[Contact]:
        contacts: list[Contact] | None = self._cache.get("contact")
        if contacts is None:
            parse = Contact.parse
            contacts = [parse(v) for v in self._values("contact")]
            self._cache["contact"] = contacts
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
        head = self._head
        if head is not None:
            # Nothing was edited: the received bytes are the serialisation.
            if "content-length" in self._vidx():
                return b"".join((head, b"\r\n\r\n", self.body))
            return b"".join(
                (head, b"\r\nContent-Length: ", str(len(self.body)).encode(), b"\r\n\r\n", self.body)
            )
        lines = [self.start_line()]
        append = lines.append
        for h in self.headers:
            raw = h.raw
            append(raw if raw is not None else f"{h.name}: {h.value}")
        if "content-length" not in self._vidx():
            lines.append(f"Content-Length: {len(self.body)}")
        lines.append("")
        lines.append("")
        head = "\r\n".join(lines).encode(ENC, ERRORS)
        return head + self.body if self.body else head

    def copy(self) -> Message:
        raise NotImplementedError

    def _copy_headers_to(self, other: Message) -> None:
        if self._headers is None:
            # Rows, index and received bytes are never changed in place: share them.
            other._headers = None
            other._rows = self._rows
            other._vindex = self._vindex
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
