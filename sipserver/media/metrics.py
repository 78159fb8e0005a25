"""Media counters: anchored calls, ng round trips and errors. Sans-IO.

``MediaMetrics`` is recorded into by the ng client (requests, round-trip times, errors) and by
``MediaSessions`` (anchored calls, failures handled by ``media.on_failure``). ``rows`` hands the
management API everything as plain tuples, so this package needs nothing from ``mgmt``:

    for name, kind, help, samples in media_metrics.rows(active=len(sessions)):
        Family(name, kind, help, tuple(Sample(labels, value, suffix)
                                       for suffix, labels, value in samples))

Invariants: label values come from small fixed sets (ng command names we send, error kinds,
failure actions); recording is a dict increment or one bisect.
"""

from __future__ import annotations

import bisect
import math

__all__ = ["ERROR_KINDS", "RTT_BUCKETS", "MediaMetrics", "Row"]

# Seconds. An ng round trip on a LAN is well under a millisecond; the top buckets catch
# retransmissions (a try times out after media.timeout).
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ERROR_KINDS = ("timeout", "refused", "error", "protocol")

Labels = tuple[tuple[str, str], ...]
# (metric name, counter|gauge|histogram, help, [(name suffix, labels, value)])
Row = tuple[str, str, str, list[tuple[str, Labels, float]]]


class MediaMetrics:
    __slots__ = ("requests", "errors", "rtt_bounds", "rtt_counts", "rtt_sum", "rtt_count", "anchored", "failures", "retransmissions")

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}  # ng command -> requests sent (first tries)
        self.retransmissions = 0
        self.errors: dict[tuple[str, str], int] = {}  # (command, kind) -> count
        self.rtt_bounds = RTT_BUCKETS
        self.rtt_counts = [0] * (len(RTT_BUCKETS) + 1)
        self.rtt_sum = 0.0
        self.rtt_count = 0
        self.anchored = 0  # calls that got an rtpengine session
        self.failures: dict[str, int] = {}  # reject | pass -> count

    # ------------------------------------------------------------------ recording
    def request(self, command: str) -> None:
        self.requests[command] = self.requests.get(command, 0) + 1

    def retransmission(self) -> None:
        self.retransmissions += 1

    def error(self, command: str, kind: str) -> None:
        key = (command, kind)
        self.errors[key] = self.errors.get(key, 0) + 1

    def round_trip(self, seconds: float) -> None:
        self.rtt_counts[bisect.bisect_left(self.rtt_bounds, seconds)] += 1
        self.rtt_sum += seconds
        self.rtt_count += 1

    def session_anchored(self) -> None:
        self.anchored += 1

    def failure(self, action: str) -> None:
        self.failures[action] = self.failures.get(action, 0) + 1

    # ------------------------------------------------------------------ reading
    def rows(self, active: int) -> list[Row]:
        """Every family; ``active`` is the number of calls anchored right now."""
        buckets: list[tuple[str, Labels, float]] = []
        running = 0
        for bound, n in zip((*self.rtt_bounds, math.inf), self.rtt_counts, strict=True):
            running += n
            le = "+Inf" if math.isinf(bound) else repr(bound)
            buckets.append(("_bucket", (("le", le),), running))
        buckets.append(("_sum", (), self.rtt_sum))
        buckets.append(("_count", (), self.rtt_count))
        return [
            (
                "sipserver_media_sessions",
                "gauge",
                "Calls whose media is anchored through rtpengine right now.",
                [("", (), active)],
            ),
            (
                "sipserver_media_sessions_anchored_total",
                "counter",
                "Calls anchored through rtpengine since start.",
                [("", (), self.anchored)],
            ),
            (
                "sipserver_media_ng_requests_total",
                "counter",
                "ng requests sent to rtpengine (retransmissions not counted), by command.",
                [("", (("command", c),), n) for c, n in sorted(self.requests.items())],
            ),
            (
                "sipserver_media_ng_retransmissions_total",
                "counter",
                "ng requests sent again after a try timed out (same cookie).",
                [("", (), self.retransmissions)],
            ),
            (
                "sipserver_media_ng_errors_total",
                "counter",
                "ng tries that failed, by command and kind: timeout (no reply), refused (ICMP), "
                "error (rtpengine said result=error), protocol (a reply we could not read).",
                [("", (("command", c), ("kind", k)), n) for (c, k), n in sorted(self.errors.items())],
            ),
            (
                "sipserver_media_ng_rtt_seconds",
                "histogram",
                "Round-trip time of answered ng requests, from the first try to the reply.",
                buckets,
            ),
            (
                "sipserver_media_failures_total",
                "counter",
                "Offers and answers that no rtpengine handled, by what media.on_failure did: "
                "reject (503) or pass (SDP untouched).",
                [("", (("action", a),), n) for a, n in sorted(self.failures.items())],
            ),
        ]
