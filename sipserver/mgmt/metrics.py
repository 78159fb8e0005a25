"""Counters, histograms and their Prometheus text rendering (exposition format 0.0.4).

The runtime records into one ``Metrics`` object on the hot path; the management API turns it,
together with gauges read from the running server at scrape time, into ``Family`` values and
renders them with ``render``.

Invariants:
- Recording is a dict increment or a bisect into a fixed bucket list: no string formatting, no
  allocation beyond a first-seen dict key, so it costs next to nothing per message.
- Label values come from bounded sets (SIP methods the runtime folds to ``other``, status codes,
  transport names, the flow-close causes folded into a few names by ``CloseCause.label``), so the
  number of series cannot grow with traffic.
- ``render`` output is valid Prometheus text format 0.0.4: one ``# HELP`` and ``# TYPE`` per
  family, label values escaped, histogram buckets cumulative and ending with ``le="+Inf"``.
- Pure: no trio, no sockets; time is passed in.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from sipserver import __version__
from sipserver.outbound.flow import CloseCause, Flow, Transport

__all__ = [
    "LAG_BUCKETS",
    "PROCESSING_BUCKETS",
    "Family",
    "Histogram",
    "Metrics",
    "Sample",
    "close_label",
    "collect",
    "render",
]

# Seconds. Message handling is usually well below a millisecond; a REGISTER that waits for its
# group commit takes an fsync, so the range goes up to seconds.
PROCESSING_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Fixed-bucket histogram: ``observe`` is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("bucket bounds must be non-empty, strictly increasing")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le means <=).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) pairs, ending with (inf, count)."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


def close_label(cause: CloseCause | str) -> str:
    """The metric label for a flow-close cause (``CloseCause.label``): ``closed``,
    ``keepalive_timeout``, ``idle_timeout``, ``server_closed``, ``evicted`` (an idle UDP flow dropped at ``limits.max_udp_flows``) or ``error``. A text that is no
    cause's (from an older caller) counts as ``error``."""
    if not isinstance(cause, CloseCause):
        try:
            cause = CloseCause(cause)
        except ValueError:
            return "error"
    return cause.label


class Metrics:
    """What the runtime records as it runs; gauges are read from the server at scrape time."""

    __slots__ = (
        "responses",
        "flows_closed",
        "flow_failures",
        "failovers",
        "keepalives",
        "last_keepalive",
        "processing",
        "loop_lag",
        "last_loop_lag",
    )

    def __init__(self) -> None:
        self.responses: dict[int, int] = {}
        self.flows_closed: dict[tuple[Transport, CloseCause], int] = {}
        # Flows that carried registrations when they died (by CloseCause), plus 430 responses
        # (key "430"; RFC 5626 §5.3.1).
        self.flow_failures: dict[CloseCause | str, int] = {}
        self.failovers: dict[str, int] = {}
        self.keepalives = 0
        self.last_keepalive: dict[Flow, float] = {}
        self.processing = Histogram(PROCESSING_BUCKETS)
        self.loop_lag = Histogram(LAG_BUCKETS)
        self.last_loop_lag = 0.0

    def response_sent(self, status: int) -> None:
        r = self.responses
        r[status] = r.get(status, 0) + 1

    def keepalive(self, flow: Flow, now: float) -> None:
        """A CRLF or STUN keep-alive arrived on ``flow`` (RFC 5626 §4.4), at trio time ``now``."""
        self.keepalives += 1
        self.last_keepalive[flow] = now

    def flow_closed(self, flow: Flow, cause: CloseCause) -> None:
        self.last_keepalive.pop(flow, None)
        key = (flow.transport, cause)
        c = self.flows_closed
        c[key] = c.get(key, 0) + 1

    def flow_failed(self, cause: CloseCause | str) -> None:
        """A flow with registrations died (transport cause) or a 430 came back (``"430"``)."""
        f = self.flow_failures
        f[cause] = f.get(cause, 0) + 1

    def failover(self, cause: str) -> None:
        """A proxy branch gave up a binding's flow and moved on (RFC 5626 §7)."""
        f = self.failovers
        f[cause] = f.get(cause, 0) + 1
        if cause == "430":  # a 430 Flow Failed from downstream also counts as a flow failure
            self.flow_failed(cause)

    def loop_lagged(self, seconds: float) -> None:
        self.last_loop_lag = seconds
        self.loop_lag.observe(seconds)


# ------------------------------------------------------------------------------ exposition

Labels = tuple[tuple[str, str], ...]


@attrs.frozen
class Sample:
    """One line of a family: ``name + suffix{labels} value``."""

    labels: Labels
    value: float
    suffix: str = ""


@attrs.frozen
class Family:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: tuple[Sample, ...]


_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def render(families: Iterable[Family]) -> str:
    """Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    for fam in families:
        if not _NAME_RE.fullmatch(fam.name):
            raise ValueError(f"bad metric name {fam.name!r}")
        lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        for s in fam.samples:
            if s.labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in s.labels)
                lines.append(f"{fam.name}{s.suffix}{{{inner}}} {_number(s.value)}")
            else:
                lines.append(f"{fam.name}{s.suffix} {_number(s.value)}")
    return "\n".join(lines) + "\n"


def histogram_samples(h: Histogram, labels: Labels = ()) -> tuple[Sample, ...]:
    out = [
        Sample((*labels, ("le", _number(bound))), n, "_bucket") for bound, n in h.cumulative()
    ]
    out.append(Sample(labels, h.sum, "_sum"))
    out.append(Sample(labels, h.count, "_count"))
    return tuple(out)


def _cluster_families(cluster: Any) -> list[Family]:
    counts = cluster.binding_counts()
    nodes = [cluster.node_id, *cluster.peers, *cluster.dead]
    return [
        _gauge("sipserver_cluster_node_info", "This node's name in the cluster (value 1).",
               [Sample((("node", cluster.node_id),), 1)]),
        _gauge("sipserver_cluster_nodes", "Nodes of the cluster as this node sees them, by state.",
               [Sample((("state", "alive"),), 1 + len(cluster.peers)), Sample((("state", "dead"),), len(cluster.dead))]),
        _gauge("sipserver_cluster_bindings", "Bindings in this node's local view, by the node holding their flow.",
               [Sample((("node", n),), counts.get(n, 0)) for n in nodes]),
        _counter("sipserver_cluster_changes_applied_total", "Binding changes of other nodes applied to the local view.",
                 [Sample((), cluster.changes_applied)]),
        _counter("sipserver_cluster_bindings_removed_total", "Bindings removed because the node holding their flow died.",
                 [Sample((), cluster.bindings_removed)]),
        _gauge("sipserver_cluster_redis_up", "1 while this node's heartbeat reaches Redis.",
               [Sample((), 1 if cluster.redis_ok else 0)]),
    ]


def _counter(name: str, help_text: str, samples: Iterable[Sample]) -> Family:
    return Family(name, "counter", help_text, tuple(samples))


def _gauge(name: str, help_text: str, samples: Iterable[Sample]) -> Family:
    return Family(name, "gauge", help_text, tuple(samples))


# Server.stats keys with a dedicated family; any other key becomes sipserver_<key>_total.
_STAT_FAMILIES = {
    "parse_errors": "Messages refused or dropped because they could not be parsed.",
    "rate_limited": "Requests over the per-source rate limit.",
    "overload_rejected": "New requests answered 503 by overload control (limits.overload_queue_delay; REGISTERs also limits.overload_store_delay).",
    "overload_rejected_store": "New REGISTERs answered 503 because replies waited too long for the location store's write (limits.overload_store_delay).",
    "auth_failures": "Digest authentication attempts that failed (RFC 3261 §22).",
    "auth_banned": "Requests refused because their source is banned after failed logins.",
    "nat_keepalives_sent": "Keepalive OPTIONS sent down the flows of UDP phones without outbound ([nat]).",
    "nat_keepalives_answered": "Responses (any status) to keepalive OPTIONS.",
    "nat_keepalive_failures": "Flows declared dead after nat.keepalive_failures unanswered keepalives (their bindings removed).",
}
_STAT_KEY_RE = re.compile(r"[a-z][a-z0-9_]*")


def binding_kind(b: Any) -> str:
    """outbound, implicit (our flow without outbound, issue 17) or external (another Path)."""
    if b.outbound:
        return "outbound"
    return "implicit" if b.flow_token is not None else "external"


def collect(server: Any, now: float) -> list[Family]:
    """Every family from a running ``sipserver.runtime.Server`` (duck-typed: ``stats``,
    ``metrics``, ``store``, ``flows``, ``transactions``, ``started_at``); ``now`` is wall time."""
    m: Metrics = server.metrics
    stats: dict[str, int] = dict(server.stats)
    fams: list[Family] = []

    fams.append(_gauge("sipserver_info", "Version of the running server.", [Sample((("version", __version__),), 1)]))
    fams.append(_gauge("sipserver_start_time_seconds", "Unix time the server started.", [Sample((), server.started_at)]))
    fams.append(_gauge("sipserver_uptime_seconds", "Seconds since the server started.", [Sample((), max(0.0, now - server.started_at))]))

    requests = sorted((k[len("requests_"):], v) for k, v in stats.items() if k.startswith("requests_"))
    fams.append(_counter("sipserver_requests_total", "SIP requests received, by method.", (Sample((("method", meth),), v) for meth, v in requests)))
    fams.append(
        _counter(
            "sipserver_responses_total",
            "SIP responses sent (generated or forwarded, retransmissions included), by status code.",
            (Sample((("code", str(code)),), v) for code, v in sorted(m.responses.items())),
        )
    )
    for key, help_text in _STAT_FAMILIES.items():
        fams.append(_counter(f"sipserver_{key}_total", help_text, [Sample((), stats.get(key, 0))]))
    for key in sorted(stats):
        if key.startswith("requests_") or key in _STAT_FAMILIES or not _STAT_KEY_RE.fullmatch(key):
            continue
        fams.append(_counter(f"sipserver_{key}_total", f"Server counter {key}.", [Sample((), stats[key])]))

    fams.append(_gauge("sipserver_transactions", "SIP transactions in flight (client and server).", [Sample((), len(server.transactions))]))

    by_transport: dict[str, int] = {}
    by_kind: dict[str, int] = {"outbound": 0, "implicit": 0, "external": 0}
    aors: set[str] = set()
    for b in server.store.all():
        if b.expires_at > now:
            t = b.transport.lower()
            by_transport[t] = by_transport.get(t, 0) + 1
            by_kind[binding_kind(b)] += 1
            aors.add(b.aor)
    fams.append(
        _gauge(
            "sipserver_bindings",
            "Live bindings by kind: outbound (RFC 5626), implicit (a phone without outbound, "
            "reached down the flow its REGISTER came on), external (behind another proxy's Path).",
            (Sample((("kind", k),), n) for k, n in by_kind.items()),
        )
    )
    fams.append(
        _gauge(
            "sipserver_registrations",
            "Live registered contacts (bindings), by the transport they registered over.",
            (Sample((("transport", t),), n) for t, n in sorted(by_transport.items())),
        )
    )
    fams.append(_gauge("sipserver_registered_aors", "Addresses of record with at least one live binding.", [Sample((), len(aors))]))
    fams.append(
        _gauge(
            "sipserver_flows",
            "Live flows (connections; UDP peers heard from recently), by transport.",
            (Sample((("transport", t.value.lower()),), server.flows.count(t)) for t in Transport),
        )
    )

    fams.append(
        _gauge(
            "sipserver_udp_queue_delay_seconds",
            "How long the last UDP datagram read waited in its socket's receive queue (kernel "
            "timestamp; 0 when the queue was empty): compare with limits.overload_queue_delay.",
            [Sample((), round(getattr(server.flows, "udp_queue_delay", 0.0), 6))],
        )
    )
    commit = getattr(server, "commit", None)
    fams.append(
        _gauge(
            "sipserver_store_commit_wait_seconds",
            "How long the oldest REGISTER reply held for the location store's write has waited "
            "(0 when none is held): compare with limits.overload_store_delay.",
            [Sample((), round(commit.age(server.clock.now()) if commit is not None else 0.0, 6))],
        )
    )
    lag = getattr(server, "loop_lag", None)
    fams.append(
        _gauge(
            "sipserver_overload_loop_lag_seconds",
            "How late the overload probe's last 10 ms timer woke while messages arrived (0 when "
            "idle): the event loop's lag, compared with limits.overload_queue_delay.",
            [Sample((), round(lag.lag if lag is not None else 0.0, 6))],
        )
    )

    closed: dict[tuple[str, str], int] = {}
    for (transport, cause), n in m.flows_closed.items():
        pair = (transport.value.lower(), close_label(cause))
        closed[pair] = closed.get(pair, 0) + n
    fams.append(
        _counter(
            "sipserver_flows_closed_total",
            "Flows that ended, by transport and cause.",
            (Sample((("transport", t), ("cause", c)), n) for (t, c), n in sorted(closed.items())),
        )
    )
    failures: dict[str, int] = {}
    for failure, n in m.flow_failures.items():
        label = failure if failure == "430" else close_label(failure)
        failures[label] = failures.get(label, 0) + n
    fams.append(
        _counter(
            "sipserver_flow_failures_total",
            "Registered flows lost (RFC 5626 §4.4, §5.3.1): closed, keepalive_timeout, error, or 430 from downstream.",
            (Sample((("cause", c),), n) for c, n in sorted(failures.items())),
        )
    )
    fams.append(
        _counter(
            "sipserver_failovers_total",
            "Bindings dropped while forwarding so the next flow of the instance is tried (RFC 5626 §7), by cause.",
            (Sample((("cause", c),), n) for c, n in sorted(m.failovers.items())),
        )
    )
    fams.append(_counter("sipserver_keepalives_total", "Keep-alives (CRLF or STUN) received on flows (RFC 5626 §4.4).", [Sample((), m.keepalives)]))
    fams.append(
        Family(
            "sipserver_message_processing_seconds",
            "histogram",
            "Time to handle one received SIP message, including waits for sends and store writes.",
            histogram_samples(m.processing),
        )
    )
    fams.append(
        Family(
            "sipserver_event_loop_lag_seconds",
            "histogram",
            "How late a 0.5 s sleep of the event loop woke up.",
            histogram_samples(m.loop_lag),
        )
    )
    cluster = getattr(server, "cluster", None)
    if cluster is not None:  # issue 20: this node and what it sees of the others
        fams.extend(_cluster_families(cluster))
    media = getattr(server, "media", None)
    if media is not None:  # issue 18: anchored calls, ng round trips and errors
        for name, kind, help_text, rows in media.metrics.rows(active=media.sessions.active):
            fams.append(Family(name, kind, help_text, tuple(Sample(labels, value, suffix) for suffix, labels, value in rows)))
    return fams
