"""The flow table: the one registry of live flows, shared by every listener (RFC 5626 §3).

The runtime sends through it (``send``), asks it whether a flow token's flow still exists
(``is_alive``: a dead one gets 430, RFC 5626 §5.3.1), sets per-flow silence limits from the
Flow-Timer it granted (``set_idle_limit``, §5.4 OB-EP-15), and reads it for the management API.

Invariants:
- a stream flow is in the table from its accepted/established connection (after the TLS or
  WebSocket handshake) until it ends; it ends exactly once, and the sink's ``on_flow_closed``
  is called at that moment with the first cause recorded;
- a UDP flow (serial 0) is in the table from its first datagram until it has been silent longer
  than its limit or is evicted; ``send`` on UDP works for any 5-tuple with one of our sockets as
  local address, known or not (stored bindings survive a restart);
- at most ``max_udp_flows`` UDP flows are tracked (bound flows may exceed it, they are limited by
  the registrar, not by datagrams): a new source evicts the unbound flow heard from least
  recently (reported closed "evicted"), never a bound one; with none to evict, the source is
  answered on a flow that is not tracked (it becomes tracked if a REGISTER binds it);
- writes to one connection are serialised (a lock that exists only while someone sends) and
  bounded by ``send_timeout``; a write that fails or times out kills the flow and raises
  ``FlowGone``; nothing is ever retried on another flow here;
- reaping is O(log n) per flow per silence period: a heap of deadlines, an entry re-armed
  lazily from the flow's last activity when it comes due;
- a UDP flow forgotten for silence or to make room is not dead: its 5-tuple stays valid as long
  as our socket exists, so a verified token naming it is ``reachable`` (and tracks it again);
  one that failed (``_UDP_FAILED``) stays dead for ``reachable``, remembered for the last
  ``FAILED_UDP_MEMORY`` of them.
"""

from __future__ import annotations

import heapq
import itertools
import math
import ssl
from collections import OrderedDict
from collections.abc import Iterator

import attrs
import trio

from sipserver.outbound.flow import Address, CloseCause, Flow, Transport

from .connection import Connection, Tracked, UdpFlowState, logger, warning_budget
from .errors import ConnectFailed, FlowGone
from .sink import MessageSink
from .stream import (
    TcpConnection,
    TlsConnection,
    cause_of,
    open_stream_connection,
    run_stream_connection,
)
from .tls import make_client_context
from .udp import UdpEndpoint

__all__ = ["FlowInfo", "FlowLimits", "FlowTable"]


_positive_int = attrs.validators.gt(0)
_positive = attrs.validators.gt(0.0)
_positive_or_none = attrs.validators.optional(attrs.validators.gt(0.0))
_DEFAULT_IDLE_TIMEOUT: float | None = 600.0
# Why a UDP flow may end that says its 5-tuple failed (RFC 5626 §5.3.1: its token gets 430);
# the other causes (idle timeout, eviction, shutdown) only forget it.
_UDP_FAILED = frozenset(
    {
        CloseCause.KEEPALIVE_TIMEOUT,
        CloseCause.SEND_ERROR,
        CloseCause.CLOSED_BY_SERVER,
        CloseCause.CLOSED_BY_MANAGEMENT,
    }
)
FAILED_UDP_MEMORY = 65_536


@attrs.frozen(slots=True)
class FlowLimits:
    """Resource limits of the transport layer (policy; the runtime fills them from config)."""

    max_connections: int = attrs.field(validator=_positive_int, default=10000)
    max_connections_per_ip: int = attrs.field(validator=_positive_int, default=100)
    # UDP 5-tuples tracked at once; beyond it the least recently heard unbound one is evicted.
    max_udp_flows: int = attrs.field(validator=_positive_int, default=100_000)
    # A started stream message must be complete within this many seconds.
    partial_message_timeout: float = attrs.field(default=10.0, validator=_positive)
    # Default silence limit of a new flow; None keeps silent flows until they close.
    idle_flow_timeout: float | None = attrs.field(
        default=_DEFAULT_IDLE_TIMEOUT, validator=_positive_or_none
    )
    max_message_size: int = attrs.field(validator=_positive_int, default=65535)
    # RFC 3261 §18.1.1: requests above MTU - 200 (1300 for 1500) should go over TCP.
    udp_warn_size: int = attrs.field(validator=_positive_int, default=1300)
    # A write not finished by then means a dead peer: the connection is closed.
    send_timeout: float = attrs.field(default=10.0, validator=_positive)
    # TLS and WebSocket handshakes of accepted connections.
    handshake_timeout: float = attrs.field(default=10.0, validator=_positive)
    # Outgoing connect (TCP connect plus TLS handshake).
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)


@attrs.frozen(slots=True)
class FlowInfo:
    """One live flow as the management API shows it (times are trio clock seconds)."""

    flow: Flow
    id: str
    transport: Transport
    local: Address
    remote: Address
    opened_at: float
    last_activity: float
    idle_limit: float | None


_CORKABLE = frozenset((Transport.TCP, Transport.TLS))


class FlowTable:
    """Live flows of every listener; ``send`` / ``close`` / ``connect`` for the runtime."""

    def __init__(
        self,
        serial_base: int,
        limits: FlowLimits | None = None,
        *,
        client_ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.limits = limits if limits is not None else FlowLimits()
        self.client_ssl_context = client_ssl_context
        self._serial_base = serial_base
        self._serials = itertools.count(1)
        self._streams: dict[Flow, Connection] = {}
        # The newest live connection per (transport, remote address), for connection reuse.
        self._by_remote: dict[tuple[Transport, Address], Connection] = {}
        self._udp: dict[Address, UdpEndpoint] = {}
        # Stream connections per remote IP and in total, counted from accept() (before any
        # handshake) until the socket is closed, so handshaking peers count against the limits.
        self._per_ip: dict[str, int] = {}
        self._total = 0
        # UDP flows tracked (every endpoint's ``flows``), and how many were evicted to make room
        # or could not be tracked because every tracked flow was bound (limits.max_udp_flows).
        self._udp_count = 0
        self.udp_evicted = 0
        self.udp_untracked = 0
        # UDP flows that failed, oldest first (``reachable``; at most FAILED_UDP_MEMORY).
        self._udp_failed: OrderedDict[Flow, None] = OrderedDict()
        self._heap: list[tuple[float, int, Tracked]] = []
        self._heap_seq = itertools.count()
        self._reaper_target = math.inf
        self._reaper_wake: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._sink: MessageSink | None = None
        self._refused_log = warning_budget("refused connection")
        self._udp_full_log = warning_budget("UDP flow table full")
        self._udp_size_log = warning_budget("oversized UDP send")
        # Seconds the datagram being handled waited in its UDP socket's receive queue (kernel
        # receive timestamp; 0 when the queue was found empty or on systems without it): the
        # runtime's overload signal.
        self.udp_queue_delay = 0.0
        # The same for the bytes last read from a TCP connection (the kernel stamps the last
        # segment of each read; 0 when that connection's buffer was found empty): issue 19.
        self.stream_queue_delay = 0.0
        # Batched sends (``cork``): messages one task writes to TCP/TLS connections, gathered
        # per connection until it calls ``uncork``.
        self._cork: dict[Connection, list[bytes]] | None = None
        self._cork_task: trio.lowlevel.Task | None = None
        self._cork_only: Connection | None = None

    # -- queries -------------------------------------------------------------------------------

    def is_alive(self, flow: Flow) -> bool:
        """Whether the flow is in the table (a UDP flow: has been heard from and not expired)."""
        return self._tracked(flow) is not None

    def reachable(self, flow: Flow) -> bool:
        """Whether a request may go down ``flow``, named by a verified flow token: a live flow,
        or a UDP flow forgotten for silence or to make room (a long call's caller that never
        registered): its 5-tuple is as valid as ever while our socket exists, so it is tracked
        again, as if its peer had just been heard. A UDP flow that failed (a lost keepalive, a
        send error, closed by us) stays dead (RFC 5626 §5.3.1, OB-EP-08: 430), and so does a
        connection: a token never opens one."""
        if self._tracked(flow) is not None:
            return True
        if flow.transport is not Transport.UDP or flow.serial != 0 or flow in self._udp_failed:
            return False
        endpoint = self._udp.get(flow.local)
        if endpoint is None:
            return False
        return self.open_udp(endpoint, flow.remote, trio.current_time()) is not None

    def last_activity(self, flow: Flow) -> float | None:
        """trio clock time of the last bytes received on the flow, None if it is not live."""
        tracked = self._tracked(flow)
        return None if tracked is None else tracked.last_activity

    def get_idle_limit(self, flow: Flow) -> float | None:
        """The flow's current silence limit (None: none, or the flow is not live)."""
        tracked = self._tracked(flow)
        return None if tracked is None else tracked.idle_limit

    def find_stream(self, transport: Transport, remote: Address) -> Flow | None:
        """The newest live connection of ``transport`` to/from ``remote``, if any.

        RFC 3261 §18.1.1 / §18.2.2: a request or response to an address we already have a
        connection with should reuse it instead of opening another.
        """
        conn = self._by_remote.get((transport, remote))
        return None if conn is None else conn.flow

    def count(self, transport: Transport | None = None) -> int:
        """Number of live flows (of one transport if given)."""
        if transport is None:
            return len(self._streams) + self._udp_count
        if transport is Transport.UDP:
            return self._udp_count
        return sum(1 for flow in self._streams if flow.transport is transport)

    def count_for_ip(self, ip: str) -> int:
        """Stream connections from/to ``ip``, including those still in their handshake."""
        return self._per_ip.get(ip, 0)

    def snapshot(self) -> list[FlowInfo]:
        return [
            FlowInfo(
                flow=t.flow,
                id=t.flow.id,
                transport=t.flow.transport,
                local=t.flow.local,
                remote=t.flow.remote,
                opened_at=t.opened_at,
                last_activity=t.last_activity,
                idle_limit=t.idle_limit,
            )
            for t in self._all_tracked()
        ]

    def find_udp_local(self, remote_host: str) -> Address | None:
        """Local address of a UDP socket that can reach ``remote_host`` (an IP literal), for a
        destination that has no flow yet; None if no listener of that address family exists."""
        family_v6 = ":" in remote_host
        for local in self._udp:
            if (":" in local[0]) == family_v6:
                return local
        return None

    @property
    def serving(self) -> bool:
        return self._nursery is not None

    # -- actions -------------------------------------------------------------------------------

    async def send(self, flow: Flow, data: bytes) -> None:
        """Write one SIP message on the flow; raise ``FlowGone`` if it is dead or the write fails.

        UDP: one datagram from the socket bound to ``flow.local`` (``flow.remote`` must be an IP
        literal); datagrams above ``udp_warn_size`` are sent with a warning (RFC 3261 §18.1.1).
        """
        if flow.transport is Transport.UDP:
            await self._send_udp(flow, data)
            return
        conn = self._streams.get(flow)
        if conn is None:
            raise FlowGone(flow, "no such connection")
        await self.send_on(conn, data)

    def close(self, flow: Flow, cause: CloseCause | str = CloseCause.CLOSED_BY_SERVER) -> None:
        """End the flow now (reported to the sink at once); unknown flows are ignored.

        A ``str`` is taken as a cause's text (``CloseCause(cause)``: ValueError if it is none).
        """
        cause = CloseCause(cause)
        tracked = self._tracked(flow)
        if tracked is None:
            return
        self.end(tracked, cause)
        if isinstance(tracked, Connection):
            tracked.abort()

    def set_idle_limit(self, flow: Flow, seconds: float | None) -> None:
        """Close the flow after ``seconds`` of silence ("keepalive timeout"); None: never.

        RFC 5626 §5.4: the runtime passes Flow-Timer plus a grace period for outbound flows.
        A UDP flow given a limit here is bound: never evicted for ``max_udp_flows`` (see
        ``release_idle_limit``). Unknown flows are ignored, except the untracked UDP flow whose
        datagram is being handled (the table was full of bound flows): it becomes tracked.
        """
        if seconds is not None and seconds <= 0:
            raise ValueError("idle limit must be positive or None")
        tracked = self._tracked(flow)
        if tracked is None:
            tracked = self._track_pending(flow)
            if tracked is None:
                return
        tracked.idle_limit = seconds
        tracked.explicit_limit = True
        if isinstance(tracked, UdpFlowState) and not tracked.bound:
            tracked.bound = True
            endpoint = self._udp.get(flow.local)
            if endpoint is not None:
                endpoint.unbound.pop(flow.remote, None)
        self._schedule(tracked)

    def release_idle_limit(self, flow: Flow) -> None:
        """The flow carries no binding any more: back to the default silence limit
        (``idle_flow_timeout``, "idle timeout"), and a UDP flow may be evicted again."""
        tracked = self._tracked(flow)
        if tracked is None:
            return
        tracked.idle_limit = self.limits.idle_flow_timeout
        tracked.explicit_limit = False
        if isinstance(tracked, UdpFlowState) and tracked.bound:
            tracked.bound = False
            endpoint = self._udp.get(flow.local)
            if endpoint is not None:
                endpoint.unbound[flow.remote] = tracked
        self._schedule(tracked)

    def _track_pending(self, flow: Flow) -> UdpFlowState | None:
        """The untracked UDP flow being handled (see ``run_udp_endpoint``), now tracked and
        reported opened; None if ``flow`` is not that one."""
        if flow.transport is not Transport.UDP:
            return None
        endpoint = self._udp.get(flow.local)
        state = None if endpoint is None else endpoint.pending
        if endpoint is None or state is None or state.flow != flow or state.cause is not None:
            return None
        endpoint.pending = None
        endpoint.flows[flow.remote] = state
        self._udp_count += 1
        self._report_opened(flow)
        return state

    async def connect(
        self,
        transport: Transport,
        remote: Address,
        *,
        server_hostname: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Flow:
        """Open an outgoing TCP or TLS connection (RFC 3261 §18.1.1 / §18.2.2 when no flow
        exists) and read it like an accepted one; raise ``ConnectFailed`` on any failure."""
        if transport not in (Transport.TCP, Transport.TLS):
            raise ValueError(f"cannot connect over {transport.value}")
        if self._nursery is None or self._sink is None:
            raise ConnectFailed(transport, remote, "transport not serving")
        if self._total >= self.limits.max_connections:
            raise ConnectFailed(
                transport,
                remote,
                f"limits.max_connections ({self.limits.max_connections}) reached",
            )
        ctx: ssl.SSLContext | None = None
        if transport is Transport.TLS:
            ctx = ssl_context or self.client_ssl_context
            if ctx is None:
                ctx = self.client_ssl_context = make_client_context()
        ip = remote[0]
        self._acquire(ip)
        try:
            conn = await open_stream_connection(self, transport, remote, ctx, server_hostname)
        except trio.TooSlowError:
            self.release(ip)
            raise ConnectFailed(transport, remote, "timeout") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ValueError) as exc:
            self.release(ip)
            inner = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
            raise ConnectFailed(transport, remote, str(inner or exc) or type(exc).__name__) from exc
        except BaseException:
            self.release(ip)
            raise
        if self._nursery is None or self._sink is None:  # shut down while connecting
            conn.abort()
            self.release(ip)
            raise ConnectFailed(transport, remote, "transport not serving")
        self.register(conn)
        self._nursery.start_soon(self._run_outgoing, self._sink, conn, ip)
        return conn.flow

    async def _run_outgoing(self, sink: MessageSink, conn: Connection, ip: str) -> None:
        try:
            assert isinstance(conn, TcpConnection | TlsConnection)
            await run_stream_connection(self, sink, conn)
        finally:
            self.release(ip)

    # -- for the transport modules (listeners and readers); the runtime never calls these ---

    def attach(self, nursery: trio.Nursery, sink: MessageSink) -> None:
        """``serve`` starts: outgoing connections run in ``nursery``, reports go to ``sink``.
        A table is served by one ``serve`` at a time (RuntimeError otherwise)."""
        if self._nursery is not None:
            raise RuntimeError("this FlowTable is already being served")
        self._nursery = nursery
        self._sink = sink

    def detach(self) -> None:
        """``serve`` ended (its listeners and connections are gone): forget the UDP flows,
        each reported closed with "shutdown", and the nursery and sink."""
        for endpoint in list(self._udp.values()):
            for state in list(endpoint.flows.values()):
                self.end(state, CloseCause.SHUTDOWN)
            endpoint.unbound.clear()
        self._udp.clear()
        self._udp_count = 0
        self._nursery = None
        self._sink = None

    def add_udp(self, endpoint: UdpEndpoint) -> None:
        """A bound UDP socket: ``send`` uses it for flows with its local address."""
        self._udp[endpoint.local] = endpoint

    def new_serial(self) -> int:
        """The serial of a new stream flow, unique for this table (taken once the connection
        is established, so serials number real flows)."""
        return self._serial_base + next(self._serials)

    def admit(self, ip: str, transport: Transport = Transport.TCP) -> bool:
        """Count an accepted connection from ``ip`` against the limits; False (logged, not
        counted) when one is reached. Every True is matched by one ``release(ip)`` when the
        socket is closed.

        The warning names the setting and its value, so an operator whose office NAT or load
        balancer hits the per-address limit knows what to raise; a peer can repeat it with
        every SYN, so it is rate limited (one line per 10 s, then a count)."""
        limits = self.limits
        if self._total >= limits.max_connections:
            self._refused_log.warning(
                "refused %s connection from %s: limits.max_connections (%d) reached",
                transport.value,
                ip,
                limits.max_connections,
            )
            return False
        if self._per_ip.get(ip, 0) >= limits.max_connections_per_ip:
            self._refused_log.warning(
                "refused %s connection from %s: limits.max_connections_per_ip (%d) reached "
                "(raise it if many clients share this address: a NAT or a load balancer)",
                transport.value,
                ip,
                limits.max_connections_per_ip,
            )
            return False
        self._acquire(ip)
        return True

    def _acquire(self, ip: str) -> None:
        self._total += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1

    def release(self, ip: str) -> None:
        """The socket of a connection counted by ``admit`` (or ``connect``) is closed."""
        self._total -= 1
        left = self._per_ip.get(ip, 0) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)

    def register(self, conn: Connection) -> None:
        """An established connection (after its handshakes) becomes a live flow: reported
        opened, reusable by ``find_stream``, watched by the reaper. Its reader must call
        ``end`` when it finishes."""
        flow = conn.flow
        self._streams[flow] = conn
        self._by_remote[(flow.transport, flow.remote)] = conn
        self._schedule(conn)
        self._report_opened(conn.flow)

    def open_udp(self, endpoint: UdpEndpoint, remote: Address, now: float) -> UdpFlowState | None:
        """The first datagram from ``remote`` on ``endpoint``: a new UDP flow, reported opened
        (the caller has checked that ``endpoint.flows`` has none for ``remote``). At
        ``max_udp_flows`` the least recently heard unbound flow is evicted first; None (not
        tracked) when every tracked flow is bound."""
        if self._udp_count >= self.limits.max_udp_flows and not self._evict_udp(endpoint):
            self.udp_untracked += 1
            self._udp_full_log.warning(
                "UDP flow from %s not tracked: limits.max_udp_flows (%d) reached and every "
                "tracked flow carries a binding; raise limits.max_udp_flows",
                remote[0],
                self.limits.max_udp_flows,
            )
            return None
        state = UdpFlowState(
            Flow(Transport.UDP, endpoint.local, remote, 0), now, self.limits.idle_flow_timeout
        )
        if self._udp_failed:
            self._udp_failed.pop(state.flow, None)  # heard from again: alive
        endpoint.flows[remote] = state
        endpoint.unbound[remote] = state
        self._udp_count += 1
        self._schedule(state)
        self._report_opened(state.flow)
        return state

    def _evict_udp(self, endpoint: UdpEndpoint) -> bool:
        """Make room for a new UDP flow on ``endpoint``: forget the unbound flow heard from least
        recently, of this endpoint if it has one, else of another. False: all are bound."""
        victim = endpoint
        if not victim.unbound:
            victim = next((ep for ep in self._udp.values() if ep.unbound), endpoint)
            if not victim.unbound:
                return False
        _, state = victim.unbound.popitem(last=False)
        self.udp_evicted += 1
        self._udp_full_log.warning(
            "limits.max_udp_flows (%d) reached: evicting the least recently heard UDP flow "
            "without a binding (%s); raise limits.max_udp_flows if this is not a flood",
            self.limits.max_udp_flows,
            state.flow.remote[0],
        )
        self.end(state, CloseCause.EVICTED)
        return True

    def adopt_udp(self, flow: Flow, idle_limit: float | None, now: float) -> bool:
        """Track a UDP flow known from before a restart (a stored binding's 5-tuple, which the
        restart did not change) as if its peer had just been heard from, with ``idle_limit``
        (None: kept while its bindings live). False when no UDP listener has its local address."""
        if flow.transport is not Transport.UDP:
            return False
        endpoint = self._udp.get(flow.local)
        if endpoint is None:
            return False
        state = endpoint.flows.get(flow.remote)
        if state is None:
            state = endpoint.flows[flow.remote] = UdpFlowState(flow, now, idle_limit)
            self._udp_count += 1
        self._udp_failed.pop(flow, None)
        state.idle_limit = idle_limit
        state.explicit_limit = idle_limit is not None
        # A stored binding's flow: bound, so never evicted (it may exceed max_udp_flows).
        state.bound = True
        endpoint.unbound.pop(flow.remote, None)
        self._schedule(state)
        return True

    def end(self, tracked: Tracked, cause: CloseCause, detail: str | None = None) -> None:
        """Forget a flow and report it closed with ``cause``, once; later calls do nothing
        (the first cause wins). It does not tear the transport down (``Connection.abort``).
        ``detail`` (an error text, a status) goes to the debug log line only."""
        if tracked.cause is not None:
            return
        tracked.cause = cause
        tracked.heap_deadline = None
        flow = tracked.flow
        if isinstance(tracked, Connection):
            if self._streams.get(flow) is tracked:
                del self._streams[flow]
            key = (flow.transport, flow.remote)
            if self._by_remote.get(key) is tracked:
                del self._by_remote[key]
        else:
            endpoint = self._udp.get(flow.local)
            if endpoint is not None and endpoint.flows.get(flow.remote) is tracked:
                del endpoint.flows[flow.remote]
                self._udp_count -= 1
                if endpoint.unbound.get(flow.remote) is tracked:
                    del endpoint.unbound[flow.remote]
            if cause in _UDP_FAILED:
                self._udp_failed[flow] = None
                if len(self._udp_failed) > FAILED_UDP_MEMORY:
                    self._udp_failed.popitem(last=False)
        if detail:
            logger.debug("flow %s closed: %s (%s)", flow.id, cause, detail)
        else:
            logger.debug("flow %s closed: %s", flow.id, cause)
        if self._sink is not None:
            try:
                self._sink.on_flow_closed(flow, cause)
            except Exception:
                logger.exception("sink.on_flow_closed failed for %s", flow.id)

    def _report_opened(self, flow: Flow) -> None:
        logger.debug("flow %s opened", flow.id)
        if self._sink is not None:
            try:
                self._sink.on_flow_opened(flow)
            except Exception:
                logger.exception("sink.on_flow_opened failed for %s", flow.id)

    def report_keepalive(self, flow: Flow) -> None:
        """A keep-alive on ``flow`` was answered (CRLF pong or STUN response): tell the sink."""
        if self._sink is not None:
            try:
                self._sink.on_keepalive(flow)
            except Exception:
                logger.exception("sink.on_keepalive failed for %s", flow.id)

    def cork(self, only: Connection | None = None) -> bool:
        """Batched sends (issue 19): until ``uncork``, messages the calling task writes to a
        TCP or TLS connection (``only`` that one, when given) are gathered and then written
        with one send per connection instead of one per message. One send system call was
        about a seventh of the server's time with a busy TCP connection (py-spy, REGISTERs
        over one connection at 2x capacity). A gathered write reports success; a failure
        shows when ``uncork`` writes (the flow is then ended like any failed flow), so the
        callers cork only where no one acts on a write's failure: replies, and a read's own
        connection. WebSocket is never corked (one SIP message per WebSocket message, RFC
        7118). False: someone else's cork is on (this call did nothing)."""
        if self._cork is not None:
            return False
        self._cork = {}
        self._cork_task = trio.lowlevel.current_task()
        self._cork_only = only
        return True

    async def uncork(self) -> None:
        """Write what ``cork`` gathered (the caller's own cork: a task checks ``cork``'s
        answer before calling this)."""
        held = self._cork
        self._cork = self._cork_task = self._cork_only = None
        if held:
            for conn, parts in held.items():
                try:
                    await self.send_on(conn, parts[0] if len(parts) == 1 else b"".join(parts))
                except FlowGone:
                    pass  # the flow is ended (send_on did it); its messages go with it

    async def send_on(
        self, conn: Connection, data: bytes, binary: bool | None = None, *, frame: bool = False
    ) -> None:
        """Serialised, time-bounded write of one message on a stream connection (``frame``:
        ``data`` is a WebSocket control frame, written as it is). Raises ``FlowGone`` when the
        flow is dead or the write fails or times out (the flow is then ended and aborted)."""
        if conn.cause is not None:
            raise FlowGone(conn.flow, conn.cause)
        cork = self._cork
        if (
            cork is not None
            and not frame
            and conn.flow.transport in _CORKABLE
            and (self._cork_only is None or self._cork_only is conn)
            and trio.lowlevel.current_task() is self._cork_task
        ):
            parts = cork.get(conn)
            if parts is not None:
                parts.append(data)
                return
            if conn.senders == 0:  # (a write under way keeps the order: it waits its turn)
                cork[conn] = [data]
                return
        if conn.senders == 0 and not frame:
            # Nobody is writing: try to hand the whole message to the kernel at once, without
            # the lock, timeout scope and reschedules of the path below (the common case).
            try:
                sent = conn.write_nowait(data)
            except OSError as exc:
                cause = conn.cause or cause_of(exc, conn.flow.transport)
                self._fail(conn, cause)
                raise FlowGone(conn.flow, cause) from exc
            if sent is not None:
                if sent == len(data):
                    return
                if sent:
                    # The rest follows below; until it has, a cut would leave half a message.
                    data = data[sent:]
                    conn.write_broken = True
        lock = conn.lock
        if lock is None:
            lock = conn.lock = trio.StrictFIFOLock()
        conn.senders += 1
        try:
            async with lock:
                if conn.cause is not None:
                    raise FlowGone(conn.flow, conn.cause)
                done = False
                with trio.move_on_after(self.limits.send_timeout):
                    if frame:
                        await conn.write_frame(data)
                    else:
                        await conn.write(data, binary)
                    conn.write_broken = False
                    done = True
                if not done:
                    self._fail(conn, CloseCause.SEND_TIMEOUT)
                    raise FlowGone(conn.flow, CloseCause.SEND_TIMEOUT)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            cause = conn.cause or cause_of(exc, conn.flow.transport)
            self._fail(conn, cause)
            raise FlowGone(conn.flow, cause) from exc
        except trio.Cancelled:
            if conn.write_broken:
                # Part of a message went out: the stream can no longer be framed by the peer.
                self._fail(conn, CloseCause.SEND_INTERRUPTED)
            raise
        finally:
            conn.senders -= 1
            if conn.senders == 0:
                conn.lock = None

    def _fail(self, conn: Connection, cause: CloseCause) -> None:
        self.end(conn, cause)
        conn.abort()

    async def _send_udp(self, flow: Flow, data: bytes) -> None:
        endpoint = self._udp_endpoint_for(flow.local, flow.remote)
        if endpoint is None:
            raise FlowGone(flow, "no UDP socket for that local address")
        if len(data) > self.limits.udp_warn_size:
            # RFC 3261 §18.1.1: a request this large should have gone over a congestion-
            # controlled transport; we still send it (never drop silently).
            self._udp_size_log.warning(
                "sending a %d-byte UDP datagram to %s (above udp_warn_size %d)",
                len(data),
                flow.remote,
                self.limits.udp_warn_size,
            )
        try:
            await endpoint.sendto(data, flow.remote)
        except OSError as exc:
            state = endpoint.flows.get(flow.remote)
            detail = str(exc.strerror or exc)
            if state is not None:
                self.end(state, CloseCause.SEND_ERROR, detail)
            raise FlowGone(flow, CloseCause.SEND_ERROR, detail) from exc

    def _udp_endpoint_for(self, local: Address, remote: Address) -> UdpEndpoint | None:
        endpoint = self._udp.get(local)
        if endpoint is not None:
            return endpoint
        # Same port and family (e.g. a flow stored with a specific address while we are bound
        # to the wildcard, or the reverse), then any socket of the family.
        v6 = ":" in remote[0]
        fallback = None
        for ep in self._udp.values():
            if (":" in ep.local[0]) != v6:
                continue
            if ep.local[1] == local[1]:
                return ep
            fallback = fallback or ep
        return fallback

    def _tracked(self, flow: Flow) -> Tracked | None:
        if flow.transport is Transport.UDP:
            endpoint = self._udp.get(flow.local)
            return None if endpoint is None else endpoint.flows.get(flow.remote)
        return self._streams.get(flow)

    def _all_tracked(self) -> Iterator[Tracked]:
        yield from self._streams.values()
        for endpoint in self._udp.values():
            yield from endpoint.flows.values()

    # -- idle reaper ---------------------------------------------------------------------------

    def _schedule(self, tracked: Tracked) -> None:
        """Make sure the reaper looks at the flow when its silence limit may be reached."""
        if tracked.idle_limit is None or tracked.cause is not None:
            return
        deadline = tracked.last_activity + tracked.idle_limit
        if tracked.heap_deadline is not None and tracked.heap_deadline <= deadline:
            return  # the pending entry comes first and re-arms itself from last_activity
        tracked.heap_deadline = deadline
        heapq.heappush(self._heap, (deadline, next(self._heap_seq), tracked))
        if deadline < self._reaper_target and self._reaper_wake is not None:
            self._reaper_wake.set()

    def _reap(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, tracked = heapq.heappop(heap)
            if tracked.heap_deadline != deadline or tracked.cause is not None:
                continue  # superseded entry, or the flow is gone already
            tracked.heap_deadline = None
            limit = tracked.idle_limit
            if limit is None:
                continue
            due = tracked.last_activity + limit
            if due > now:
                tracked.heap_deadline = due
                heapq.heappush(heap, (due, next(self._heap_seq), tracked))
                continue
            cause = (
                CloseCause.KEEPALIVE_TIMEOUT if tracked.explicit_limit else CloseCause.IDLE_TIMEOUT
            )
            if isinstance(tracked, Connection):
                self._fail(tracked, cause)
            else:
                self.end(tracked, cause)

    async def run_reaper(self, slack: float = 0.02) -> None:
        """The idle reaper task (run by ``serve``): close stream flows and forget UDP flows
        silent longer than their limit."""
        while True:
            self._reap(trio.current_time())
            self._reaper_target = self._heap[0][0] if self._heap else math.inf
            wake = self._reaper_wake = trio.Event()
            # A little slack lets one wake-up handle a burst of deadlines.
            with trio.move_on_at(self._reaper_target + slack):
                await wake.wait()
