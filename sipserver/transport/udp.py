"""UDP listener: one socket, one task, every datagram handled inline (RFC 3261 §18.1/§18.2).

Each datagram is, in this order (RFC 5626 §8, OB-STUN-01..03): a STUN message, answered with a
Binding success response when it is a well-formed Binding request and otherwise dropped, never
handed to SIP; a datagram of only CR/LF/SP/HTAB, which is a keep-alive and counts as activity
only; anything else is one SIP message for the sink, whatever its size (the parser answers 513
to an oversized one).

Invariants: a UDP flow is the 5-tuple (our bound address, the source address); its first
datagram reports ``on_flow_opened``; the flow table forgets it after its idle limit. The flow's
local address is the listener's bound address (a wildcard socket gives ``0.0.0.0``/``::``).
At most ``limits.max_udp_flows`` flows are tracked: a new source then evicts the unbound flow
heard from least recently (``UdpEndpoint.unbound`` is in that order, kept O(1) per datagram);
when every tracked flow is bound, the datagram is still handled, on a flow that is not tracked.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import trio

from sipserver.outbound.flow import Address, Flow, Transport
from sipserver.outbound.stun import binding_response, is_stun

from .connection import UdpFlowState, deliver, logger
from .sink import MessageSink

if TYPE_CHECKING:
    from .flows import FlowTable

__all__ = ["UdpEndpoint", "run_udp_endpoint"]

# The largest UDP payload; a datagram is never truncated.
_RECV_SIZE = 65535
_BLANK = b" \t\r\n"
# Datagrams read in a row before other tasks get a turn.
_BATCH = 32
# Linux: each datagram carries its kernel receive time (SOL_SOCKET / SO_TIMESTAMPNS, a struct
# timespec), which tells how long it waited in the socket queue: the overload signal (a busy
# event loop does not fall behind on its own timers, it falls behind on this queue). The kernel
# starts stamping at arrival a moment after the first socket asks (deferred work); until then
# the stamp is the read time, a delay of 0.
# Python exposes no name for it; 35 is its value in Linux's asm-generic/socket.h.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform.startswith("linux") else None)
_TIMESPEC = struct.Struct("@qq")
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0


class UdpEndpoint:
    """One bound UDP socket and the flows that have used it."""

    __slots__ = ("local", "family", "raw", "sock", "flows", "unbound", "pending", "timestamps")

    def __init__(self, raw: socket.socket) -> None:
        raw.setblocking(False)
        self.raw = raw
        self.timestamps = False
        if _SO_TIMESTAMPNS is not None and _ANC_SIZE:
            try:
                raw.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                self.timestamps = True
            except OSError:  # not Linux: no queue-delay signal, nothing else changes
                pass
        self.sock = trio.socket.from_stdlib_socket(raw)
        self.family = raw.family
        name = raw.getsockname()
        self.local: Address = (name[0], name[1])
        self.flows: dict[Address, UdpFlowState] = {}
        # The flows of ``flows`` that are not bound, least recently heard from first: the ones
        # evicted when the table is full (limits.max_udp_flows).
        self.unbound: OrderedDict[Address, UdpFlowState] = OrderedDict()
        # While a datagram from a source the full table could not track is being handled: its
        # state, so that a REGISTER binding it (``FlowTable.set_idle_limit``) makes it tracked.
        self.pending: UdpFlowState | None = None

    async def sendto(self, data: bytes, remote: Address) -> None:
        """Send one datagram to an IP-literal address.

        Done on the plain socket to skip trio's per-call address resolution (this is the UDP hot
        path). It is a cancellation point and waits when the socket buffer is full, but a send
        that succeeds at once does not yield to the scheduler: the reading task that called it
        yields on its next receive anyway, and a reschedule per datagram sent was a measurable
        share of the per-message cost (docs/performance.md).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                self.raw.sendto(data, remote)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.raw)
            else:
                break

    def close(self) -> None:
        self.sock.close()


async def run_udp_endpoint(table: FlowTable, sink: MessageSink, endpoint: UdpEndpoint) -> None:
    """Read datagrams until cancelled (or the socket is closed).

    The socket is read directly while datagrams are waiting, yielding to the scheduler after
    every ``_BATCH`` of them and waiting for readability only when the queue is empty. Going
    through trio's socket wrapper costs a full reschedule per datagram, which under load was a
    fifth of the cost of a REGISTER (docs/performance.md); a batch bounds how long other tasks
    (connections, timers, the store writer) wait behind a busy UDP socket.
    """
    raw = endpoint.raw
    recvfrom = raw.recvfrom
    recvmsg = raw.recvmsg if endpoint.timestamps else None
    unpack = _TIMESPEC.unpack
    wall = time.time
    flows = endpoint.flows
    touch = endpoint.unbound.move_to_end
    wait_readable = trio.lowlevel.wait_readable
    checkpoint = trio.lowlevel.checkpoint
    batch = 0
    while True:
        try:
            if recvmsg is not None:
                data, ancillary, _flags, addr = recvmsg(_RECV_SIZE, _ANC_SIZE)
                if ancillary:
                    sec, nsec = unpack(ancillary[0][2])
                    table.udp_queue_delay = wall() - sec - nsec * 1e-9
            else:
                data, addr = recvfrom(_RECV_SIZE)
        except BlockingIOError:
            batch = 0
            table.udp_queue_delay = 0.0  # the queue is empty
            try:
                await wait_readable(raw)
            except (trio.ClosedResourceError, OSError):
                return
            continue
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return
            # e.g. an ICMP error reported on the socket (Windows): not fatal for the listener.
            logger.debug("UDP receive error on %s: %s", endpoint.local, exc)
            await checkpoint()
            continue
        batch += 1
        if batch >= _BATCH:
            batch = 0
            await checkpoint()
        remote: Address = (addr[0], addr[1])
        now = trio.current_time()
        state = flows.get(remote)
        untracked = None
        if state is None:
            state = table.open_udp(endpoint, remote, now)
            if state is None:  # the table is full of bound flows: handled, not tracked
                flow = Flow(Transport.UDP, endpoint.local, remote, 0)
                state = untracked = UdpFlowState(flow, now, None)
        else:
            state.last_activity = now
            if not state.bound:
                try:
                    touch(remote)  # now the most recently heard unbound flow
                except KeyError:  # never expected; a listener must not die of it
                    endpoint.unbound[remote] = state
        if not data:
            continue
        first = data[0]
        if first < 0x40 and is_stun(data):
            # RFC 5626 §8: STUN keep-alive on the SIP port; never parsed as SIP.
            response = binding_response(data, remote)
            if response is not None:
                try:
                    await endpoint.sendto(response, remote)
                except OSError as exc:
                    logger.debug("cannot answer STUN from %s: %s", remote, exc)
                else:
                    if untracked is None:  # (an untracked flow is never reported closed)
                        table.report_keepalive(state.flow)
            continue
        if first in _BLANK and not data.strip(_BLANK):
            continue  # CRLF keep-alive over UDP: activity only
        if untracked is None:
            await deliver(sink, state.flow, data)
            continue
        endpoint.pending = untracked
        try:
            await deliver(sink, state.flow, data)
        finally:
            endpoint.pending = None
