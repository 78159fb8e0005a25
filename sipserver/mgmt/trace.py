"""Run-time SIP message tracing for chosen source addresses or addresses of record.

The management API switches filters on and off (``POST /trace``); the runtime asks ``active``
before doing anything, so with no filter set tracing costs one attribute read per message.

Invariants:
- One log record per traced message, at INFO on logger ``sipserver.trace``, carrying the
  direction (``in``/``out``), the flow id, the peer address and the full message text (bytes
  decoded as UTF-8 with replacement, so a record never fails to build).
- A message matches when its flow's peer IP is a traced source, or when the AoR (``user@host``)
  of its From, To or Request-URI is a traced AoR. Messages that do not parse still match by source.
- Filters are normalised on the way in (IP addresses by ``ipaddress``, AoRs as ``user@host``
  with the host in lower case and no scheme), so equal filters compare equal.
- Pure: no trio, no sockets.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from sipserver.outbound.flow import Flow
from sipserver.sip import ParseError, Request, Response, SipURI, parse_message

__all__ = ["Tracer", "normalize_aor", "normalize_source", "trace_log"]

trace_log = logging.getLogger("sipserver.trace")


def normalize_source(text: str) -> str:
    """An IP address in canonical form; ValueError when ``text`` is not one."""
    return str(ipaddress.ip_address(text.strip().strip("[]")))


def normalize_aor(text: str) -> str:
    """``sip:alice@Example.COM`` / ``alice@example.com`` -> ``alice@example.com``
    (RFC 3261 §10.3 step 5: the AoR key the location store uses). ValueError when empty."""
    aor = text.strip()
    for scheme in ("sip:", "sips:"):
        if aor.lower().startswith(scheme):
            aor = aor[len(scheme):]
            break
    aor = aor.split(";", 1)[0].split("?", 1)[0]
    user, at, host = aor.rpartition("@")
    if not host or (at and not user) or any(c.isspace() for c in aor):
        raise ValueError(f"not an address of record: {text!r}")
    return f"{user}@{host.lower()}" if at else host.lower()


def _aor_of(uri: Any) -> str | None:
    return uri.aor if isinstance(uri, SipURI) else None


def _norm_ip(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


class Tracer:
    """The current trace filters, and the code that logs matching messages."""

    __slots__ = ("sources", "aors", "active", "traced")

    def __init__(self) -> None:
        self.sources: set[str] = set()
        self.aors: set[str] = set()
        self.active = False
        self.traced = 0

    def set(self, *, source: str | None, aor: str | None, enabled: bool) -> None:
        """Switch tracing for a source IP and/or an AoR on or off; neither given with
        ``enabled`` False switches every filter off. ValueError for a malformed value or for
        ``enabled`` without a filter."""
        src = normalize_source(source) if source is not None else None
        key = normalize_aor(aor) if aor is not None else None
        if src is None and key is None:
            if enabled:
                raise ValueError("give a source address or an AoR to trace")
            self.sources.clear()
            self.aors.clear()
        if src is not None:
            (self.sources.add if enabled else self.sources.discard)(src)
        if key is not None:
            (self.aors.add if enabled else self.aors.discard)(key)
        self.active = bool(self.sources or self.aors)

    def state(self) -> dict[str, list[str]]:
        return {"sources": sorted(self.sources), "aors": sorted(self.aors)}

    # ------------------------------------------------------------------ matching
    def _matches(self, flow: Flow, message: Request | Response | None) -> bool:
        if self.sources and _norm_ip(flow.remote[0]) in self.sources:
            return True
        if not self.aors or message is None:
            return False
        try:
            if _aor_of(message.to.uri) in self.aors:
                return True
            if _aor_of(message.from_.uri) in self.aors:
                return True
            if isinstance(message, Request) and _aor_of(message.uri) in self.aors:
                return True
        except ParseError:
            return False
        return False

    def incoming(self, flow: Flow, data: bytes) -> None:
        """A message as it arrived (parsed here a second time only while tracing is on)."""
        message: Request | Response | None = None
        if self.aors:
            try:
                parsed = parse_message(data)
            except ParseError:
                parsed = None
            if isinstance(parsed, Request | Response):
                message = parsed
        if self._matches(flow, message):
            self._log("in", flow, data)

    def outgoing(self, flow: Flow, message: Request | Response, data: bytes) -> None:
        if self._matches(flow, message):
            self._log("out", flow, data)

    def _log(self, direction: str, flow: Flow, data: bytes) -> None:
        self.traced += 1
        peer = f"{flow.remote[0]}:{flow.remote[1]}"
        arrow = "received from" if direction == "in" else "sent to"
        trace_log.info(
            "%s %s on %s (%d bytes)\n%s",
            arrow,
            peer,
            flow.id,
            len(data),
            data.decode("utf-8", "replace"),
            extra={"direction": direction, "flow": flow.id, "peer": peer},
        )
