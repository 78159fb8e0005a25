"""The runtime's side of cheap shedding (issue 19): the Shedder's decision, the byte-level 503
of ``shed.early_503`` and its sending, before a message is parsed."""

from __future__ import annotations

from typing import Any

from .overload import Shedder
from .shed import SHED_TAG, acks_shed_503, early_503, in_shed_dialog
from .transport.errors import FlowGone

__all__ = ["overload_warning", "shed_early", "shed_register", "store_behind"]

_NOT_NEW = (b"SIP/", b"ACK ", b"CANCEL ")


def overload_warning(server: Any) -> None:
    """The (rate-limited) log line of a shed request: which wait was too long. Its figures are
    read only when the line is written: while shedding this runs for every shed request."""
    server._overload_log.warning_of(
        "overload: requests waited %.0f ms in the socket queues (UDP, TCP), the event loop ran "
        "%.0f ms late and REGISTER replies waited %.0f ms besides the location store's writes "
        "(limits.overload_queue_delay = %.0f ms); answering a share of new requests 503 with "
        "Retry-After: %d until they drain",
        lambda: (
            max(server.flows.udp_queue_delay, server.flows.stream_queue_delay) * 1000,
            server.loop_lag.lag * 1000, server.commit.age_outside_writes(server.clock.now()) * 1000,
            server.shedder.limit * 1000, server.cfg.limits.overload_retry_after,
        ),
    )


async def shed_early(server: Any, flow: Any, data: bytes) -> bool:
    """The runtime's cheap path (issue 19): while shedding, answer a new out-of-dialog request
    503 from its bytes (``shed.early_503``) and report it handled; False: handle it fully.

    The Shedder's state advances here for every message, so it also stops shedding on time."""
    if SHED_TAG in data:  # the tag of a byte-level 503: its ACK, or a request "in" its dialog
        if acks_shed_503(data):
            return True
        resp = in_shed_dialog(data, flow.remote, _server_header(server))
        if resp is not None:
            server.count("overload_shed_dialog_481")
            await _send_stateless(server, flow, resp, 481)
            return True
    shedder: Shedder = server.shedder
    now = server.clock.now()
    shedder.verdict = None
    if not shedder.update(server._queue_delay(now), now):
        shedder.verdict = False  # (the runtime's own check then needs no second look)
        return False
    if data.startswith(_NOT_NEW) or data.count(b";tag=") > 1:
        return False  # a response, ACK, CANCEL or (From and To tags) in-dialog: never shed
    # The share decides before the byte scan: an admitted request is handled in full and
    # would only pay for a 503 it never sends (half the new requests at 2x capacity).
    if not shedder.take():
        shedder.verdict = False  # admitted: handled in full, not shed again by the runtime
        return False
    servers = server.transactions._servers  # the §17.2.3 key table, read-only here
    resp = early_503(
        data, flow.remote, server.cfg.limits.overload_retry_after,
        servers.__contains__, _server_header(server),
    )
    if resp is None:
        shedder.untake()  # not a new request, or unsure: the runtime's check decides if it is
        return False
    server.count("overload_rejected")
    server.count("overload_rejected_early")
    overload_warning(server)
    await _send_stateless(server, flow, resp, 503)
    return True


def store_behind(server: Any, now: float) -> bool:
    """Whether to answer this new REGISTER 503 because the location store falls behind
    (``limits.overload_store_delay``; ``shed_register`` answers it).

    The signal is the age of the oldest reply held for the group commit, the writes' own time
    included. The server's signal (``Server._queue_delay``) leaves that time out, because a
    slow disk is not an overload of the server: one write takes every change queued before it,
    so a held reply waits for at most two writes however many REGISTERs arrive. A 104 ms fsync
    stall on a VM used to make the 50 ms queue limit answer calls 503 too (issue 19). Only
    REGISTERs write to the store, so only they are refused when it does fall behind."""
    shedder: Shedder = server.store_shedder
    commit = server.commit
    return (
        shedder.limit > 0 and commit.durable and shedder.update(commit.age(now), now) and shedder.take()
    )


async def shed_register(server: Any, req: Any, flow: Any, now: float) -> None:
    """The 503 with Retry-After (RFC 3261 §21.5.4) of a REGISTER ``store_behind`` refused,
    stateless like every overload 503, and its (rate-limited) warning."""
    shedder: Shedder = server.store_shedder
    commit = server.commit
    server.count("overload_rejected")
    server.count("overload_rejected_store")
    retry = server.cfg.limits.overload_retry_after
    server._store_log.warning_of(
        "location store overload: REGISTER replies have waited %.0f ms for the store's write "
        "(limits.overload_store_delay = %.0f ms); answering a share of new REGISTERs 503 with "
        "Retry-After: %d until it catches up",
        lambda: (commit.age(now) * 1000, shedder.limit * 1000, retry),
    )
    await server.reply(
        req, flow, 503, "Service Unavailable (location store overloaded)", [("Retry-After", str(retry))]
    )


def _server_header(server: Any) -> bytes:
    return (server.cfg.server.server_header or "").encode()


async def _send_stateless(server: Any, flow: Any, resp: bytes, status: int) -> None:
    """A response built from bytes goes out once, like any stateless one (RFC 3261 §8.2.6):
    a flow gone meanwhile loses it."""
    try:
        await server.flows.send(flow, resp)
    except FlowGone:
        pass
    server.metrics.response_sent(status)
