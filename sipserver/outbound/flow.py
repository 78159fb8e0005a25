"""The Flow: the unit the whole server turns on (RFC 5626 §3, "flow").

A flow is a transport-level association between a UA and this server: a TCP, TLS or WebSocket
connection, or a UDP 5-tuple. Every received message carries the Flow it arrived on and every
message sent names one. The connection ``serial`` makes a Flow of a closed connection differ from
a new connection that happens to reuse the same addresses, so a flow token minted for the old
connection never reaches the new one.

Invariants: a Flow is an immutable value; UDP flows have ``serial == 0`` (a 5-tuple is the flow);
stream flows get a serial unique for the process lifetime (and, with the start-up epoch mixed in
by the runtime, across restarts).
"""

from __future__ import annotations

import enum

import attrs


class Transport(enum.Enum):
    """Transport names as they appear in a Via sent-protocol (RFC 3261 §20.42, RFC 7118 §5.2)."""

    UDP = "UDP"
    TCP = "TCP"
    TLS = "TLS"
    WS = "WS"
    WSS = "WSS"

    @property
    def reliable(self) -> bool:
        return self is not Transport.UDP

    @property
    def secure(self) -> bool:
        return self in (Transport.TLS, Transport.WSS)

    @property
    def uri_param(self) -> str:
        """Value of the URI ``transport`` parameter: RFC 7118 §5.3 uses ``ws`` for WS and WSS."""
        if self is Transport.WSS:
            return "ws"
        return str(self.value).lower()

    @classmethod
    def from_via(cls, token: str) -> Transport | None:
        try:
            return cls(token.upper())
        except ValueError:
            return None


Address = tuple[str, int]


@attrs.frozen(slots=True)
class Flow:
    """(transport, local address, remote address, connection serial). RFC 5626 §3."""

    transport: Transport
    local: Address
    remote: Address
    serial: int = 0

    @property
    def id(self) -> str:
        """Stable printable identifier for logs and the management API."""
        return f"{self.transport.value.lower()}:{_fmt(self.local)}-{_fmt(self.remote)}#{self.serial}"


def _fmt(addr: Address) -> str:
    host, port = addr
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"
