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


Address = tuple[str, int]


class CloseCause(str, enum.Enum):
    """Why a flow ended, as the transport reports it (``MessageSink.on_flow_closed``; RFC 5626
    §5.3.1: a flow that ends has failed, whatever the cause).

    The value is the text for log lines (a ``str`` Enum: ``"%s" % cause`` and comparisons with
    the text work); ``label`` folds the causes into the few values of the metrics' ``cause``
    label: ``closed`` (the peer closed or reset it), ``keepalive_timeout`` (RFC 5626 §4.4: no
    keep-alive within Flow-Timer plus grace), ``idle_timeout``, ``server_closed``, ``evicted``
    (a UDP flow dropped from a full table), ``error``.
    Details that vary (an OS error text, a status or close code) are not part of the cause;
    the transport logs them at debug level.
    """

    _value_: str
    label: str

    def __new__(cls, text: str, label: str = "error") -> CloseCause:
        member = str.__new__(cls, text)
        member._value_ = text
        member.label = label
        return member

    def __str__(self) -> str:
        return self._value_

    # The peer ended it.
    CLOSED_BY_PEER = ("closed by peer", "closed")
    RESET = ("reset", "closed")
    # The silence limit: Flow-Timer plus grace set by the runtime, or the default one.
    KEEPALIVE_TIMEOUT = ("keepalive timeout", "keepalive_timeout")
    IDLE_TIMEOUT = ("idle timeout", "idle_timeout")
    # The server ended it.
    CLOSED_BY_SERVER = ("closed by server", "server_closed")
    CLOSED_BY_MANAGEMENT = ("closed by management API", "server_closed")
    SHUTDOWN = ("shutdown", "server_closed")
    # A UDP flow without a binding forgotten to make room (limits.max_udp_flows).
    EVICTED = ("evicted", "evicted")
    # Errors (label "error"): of the connection, of what the peer sent, of a write.
    TLS_ERROR = "tls error"
    TIMEOUT = "timeout"  # the kernel gave up on the peer (ETIMEDOUT)
    SOCKET_ERROR = "socket error"
    FRAMING_ERROR = "framing error"  # RFC 3261 §18.3
    PARTIAL_MESSAGE_TIMEOUT = "partial message timeout"
    MESSAGE_TOO_LARGE = "message too large"  # WebSocket, far above max_message_size
    WEBSOCKET_PROTOCOL_ERROR = "websocket protocol error"  # RFC 6455 §7.4.1
    SEND_TIMEOUT = "send timeout"
    SEND_INTERRUPTED = "send interrupted"  # part of a message went out, the rest could not
    SEND_ERROR = "send error"  # a UDP send failed
    INTERNAL_ERROR = "internal error"  # a bug in the reader (logged with its traceback)


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
