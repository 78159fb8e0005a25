"""sipserver.mgmt.metrics and sipserver.mgmt.trace with plain calls (issue: operability).

Both modules are pure: the recorder the runtime calls on the hot path, the Prometheus text
rendering, and the trace filters are checked without a server or an event loop."""

from __future__ import annotations

import logging
import math
import re
import sys
from typing import Any

import attrs
import pytest

from sipserver.mgmt.metrics import (
    PROCESSING_BUCKETS,
    Family,
    Histogram,
    Metrics,
    Sample,
    close_label,
    collect,
    render,
)
from sipserver.mgmt.trace import Tracer, normalize_aor, normalize_source
from sipserver.outbound.flow import CloseCause, Flow, Transport
from sipserver.registrar.binding import Binding, BindingKey


def test_metrics_and_trace_modules_do_not_need_trio() -> None:
    """DESIGN.md: pure modules; importing them must not pull in the event loop."""
    import subprocess

    code = "import sys, sipserver.mgmt.metrics, sipserver.mgmt.trace; print('trio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------ histogram

def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    h = Histogram([0.1, 1.0])
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    assert h.cumulative() == [(0.1, 2), (1.0, 4), (math.inf, 5)]
    assert h.count == 5 and h.sum == pytest.approx(8.65)


@pytest.mark.parametrize("bounds", [[], [1.0, 0.5], [0.5, 0.5]])
def test_histogram_rejects_bad_bounds(bounds: list[float]) -> None:
    with pytest.raises(ValueError):
        Histogram(bounds)


# ------------------------------------------------------------------------------ rendering

def test_render_counter_gauge_and_escapes() -> None:
    text = render(
        [
            Family("x_total", "counter", "Help with \\ and\nnewline.", (Sample((("a", 'q"u\\o\nte'),), 3),)),
            Family("g", "gauge", "A gauge.", (Sample((), 0.25), Sample((("k", "v"),), 1e20))),
        ]
    )
    assert text.splitlines() == [
        "# HELP x_total Help with \\\\ and\\nnewline.",
        "# TYPE x_total counter",
        'x_total{a="q\\"u\\\\o\\nte"} 3',
        "# HELP g A gauge.",
        "# TYPE g gauge",
        "g 0.25",
        'g{k="v"} 1e+20',
    ]
    assert text.endswith("\n")


def test_render_rejects_bad_metric_names() -> None:
    with pytest.raises(ValueError):
        render([Family("bad name", "gauge", "x", ())])


# ------------------------------------------------------------------------------ recorder

def flow(serial: int = 7, transport: Transport = Transport.TCP) -> Flow:
    return Flow(transport, ("127.0.0.1", 5060), ("192.0.2.1", 40000 + serial), serial)


@pytest.mark.parametrize(
    ("cause", "label"),
    [
        ("closed by peer", "closed"),
        ("reset", "closed"),
        ("keepalive timeout", "keepalive_timeout"),
        ("idle timeout", "idle_timeout"),
        ("closed by server", "server_closed"),
        ("closed by management API", "server_closed"),
        ("tls error", "error"),
        ("framing error (400 bad)", "error"),
    ],
)
def test_close_causes_fold_into_few_labels(cause: str, label: str) -> None:
    assert close_label(cause) == label


def test_every_close_cause_folds_into_a_known_label() -> None:
    """The transport reports ``CloseCause`` members; each carries its label, and its text is
    what the log lines and the /stats counts show."""
    labels = {"closed", "keepalive_timeout", "idle_timeout", "server_closed", "error", "evicted"}
    for cause in CloseCause:
        assert close_label(cause) == cause.label in labels
        assert "%s" % cause == cause.value and CloseCause(cause.value) is cause
    assert close_label(CloseCause.RESET) == "closed"
    assert close_label(CloseCause.CLOSED_BY_MANAGEMENT) == "server_closed"
    assert close_label(CloseCause.FRAMING_ERROR) == "error"


def test_recorder_keeps_keepalive_times_only_for_live_flows() -> None:
    m = Metrics()
    f = flow()
    m.keepalive(f, 10.0)
    m.keepalive(f, 12.5)
    assert m.keepalives == 2 and m.last_keepalive[f] == 12.5
    m.flow_closed(f, "keepalive timeout")
    assert f not in m.last_keepalive
    assert m.flows_closed == {(Transport.TCP, "keepalive timeout"): 1}


def test_a_430_failover_is_also_a_flow_failure() -> None:
    """RFC 5626 §7: a 430 means the flow behind the binding is dead."""
    m = Metrics()
    m.failover("430")
    m.failover("transport")
    assert m.failovers == {"430": 1, "transport": 1}
    assert m.flow_failures == {"430": 1}


@attrs.define
class FakeFlows:
    counts: dict[Transport, int]
    udp_queue_delay: float = 0.0

    def count(self, transport: Transport | None = None) -> int:
        return self.counts.get(transport, 0) if transport is not None else sum(self.counts.values())


@attrs.define
class FakeStore:
    bindings: list[Binding]

    def all(self) -> list[Binding]:
        return list(self.bindings)


def binding(aor: str, contact: str, transport: str, expires_at: float) -> Binding:
    return Binding(
        key=BindingKey(aor, "contact", contact, None),
        aor=aor,
        contact_uri=contact,
        expires_at=expires_at,
        call_id="c",
        cseq=1,
        transport=transport,
    )


@attrs.define
class FakeServer:
    stats: dict[str, int]
    metrics: Metrics
    store: FakeStore
    flows: FakeFlows
    transactions: list[Any]
    started_at: float = 1000.0


def parse(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_collect_renders_everything_the_server_knows() -> None:
    m = Metrics()
    m.response_sent(200)
    m.response_sent(200)
    m.response_sent(430)
    m.flow_closed(flow(1), "closed by peer")
    m.flow_closed(flow(2), "reset")
    m.flow_closed(flow(3, Transport.WS), "weird new cause")
    m.flow_failed("keepalive timeout")
    m.failover("430")
    m.processing.observe(0.0003)
    m.processing.observe(0.02)
    m.loop_lagged(0.002)
    server = FakeServer(
        stats={"requests_REGISTER": 4, "requests_other": 1, "parse_errors": 2, "auth_failures": 1, "new_thing": 5},
        metrics=m,
        store=FakeStore(
            [
                binding("a@x", "sip:a@1", "tcp", 2000.0),
                binding("a@x", "sip:a@2", "udp", 2000.0),
                binding("b@x", "sip:b@1", "tcp", 2000.0),
                binding("c@x", "sip:c@1", "tcp", 1000.0),  # expired, not yet swept
            ]
        ),
        flows=FakeFlows({Transport.TCP: 2, Transport.UDP: 5}, udp_queue_delay=0.25),
        transactions=[object(), object(), object()],
    )
    values = parse(render(collect(server, now=1500.0)))
    assert values["sipserver_uptime_seconds"] == 500
    assert values['sipserver_requests_total{method="REGISTER"}'] == 4
    assert values['sipserver_requests_total{method="other"}'] == 1
    assert values['sipserver_responses_total{code="200"}'] == 2
    assert values['sipserver_responses_total{code="430"}'] == 1
    assert values["sipserver_parse_errors_total"] == 2
    assert values["sipserver_rate_limited_total"] == 0
    assert values["sipserver_auth_failures_total"] == 1
    assert values["sipserver_new_thing_total"] == 5
    assert values["sipserver_transactions"] == 3
    assert values['sipserver_registrations{transport="tcp"}'] == 2
    assert values['sipserver_registrations{transport="udp"}'] == 1
    assert values["sipserver_registered_aors"] == 2
    assert values['sipserver_flows{transport="tcp"}'] == 2
    assert values['sipserver_flows{transport="wss"}'] == 0
    assert values["sipserver_udp_queue_delay_seconds"] == 0.25
    assert values['sipserver_flows_closed_total{transport="tcp",cause="closed"}'] == 2
    assert values['sipserver_flows_closed_total{transport="ws",cause="error"}'] == 1
    assert values['sipserver_flow_failures_total{cause="keepalive_timeout"}'] == 1
    assert values['sipserver_flow_failures_total{cause="430"}'] == 1
    assert values['sipserver_failovers_total{cause="430"}'] == 1
    assert values['sipserver_message_processing_seconds_bucket{le="0.0005"}'] == 1
    assert values['sipserver_message_processing_seconds_bucket{le="0.025"}'] == 2
    assert values['sipserver_message_processing_seconds_bucket{le="+Inf"}'] == 2
    assert values["sipserver_message_processing_seconds_count"] == 2
    assert values["sipserver_message_processing_seconds_sum"] == pytest.approx(0.0203)
    assert values["sipserver_event_loop_lag_seconds_count"] == 1
    n_buckets = sum(1 for k in values if k.startswith("sipserver_message_processing_seconds_bucket"))
    assert n_buckets == len(PROCESSING_BUCKETS) + 1


def test_every_collected_family_is_well_formed() -> None:
    server = FakeServer({}, Metrics(), FakeStore([]), FakeFlows({}), [])
    text = render(collect(server, now=1000.0))
    names = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert len(names) == len({n for n, _ in names})
    for name, kind in names:
        if kind == "counter":
            assert name.endswith("_total"), name
        assert re.search(rf"^# HELP {name} \S", text, re.M)


# ------------------------------------------------------------------------------ tracing

def test_normalize_source_and_aor() -> None:
    assert normalize_source(" 0:0::1 ") == "::1"
    assert normalize_source("[::1]") == "::1"
    with pytest.raises(ValueError):
        normalize_source("example.com")
    assert normalize_aor("sip:Alice@Example.COM;transport=tcp") == "Alice@example.com"
    assert normalize_aor("sips:bob@x.org") == "bob@x.org"
    assert normalize_aor("example.org") == "example.org"
    for bad in ("", "@x", "a b@x", "sip:"):
        with pytest.raises(ValueError):
            normalize_aor(bad)


def test_tracer_filters_switch_on_and_off() -> None:
    t = Tracer()
    assert not t.active
    t.set(source="127.0.0.1", aor=None, enabled=True)
    t.set(source=None, aor="sip:alice@example.com", enabled=True)
    assert t.active and t.state() == {"sources": ["127.0.0.1"], "aors": ["alice@example.com"]}
    t.set(source="127.0.0.1", aor=None, enabled=False)
    assert t.active and t.state()["sources"] == []
    t.set(source=None, aor=None, enabled=False)
    assert not t.active and t.state() == {"sources": [], "aors": []}
    with pytest.raises(ValueError):
        t.set(source=None, aor=None, enabled=True)
    with pytest.raises(ValueError):
        t.set(source="nope", aor=None, enabled=True)


def register_bytes(user: str) -> bytes:
    return (
        f"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:{user}@example.com>\r\nFrom: <sip:{user}@example.com>;tag=1\r\n"
        f"Call-ID: c1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_tracer_logs_one_record_per_matching_message(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sipserver.trace")
    t = Tracer()
    t.set(source=None, aor="alice@example.com", enabled=True)
    f = Flow(Transport.UDP, ("127.0.0.1", 5060), ("192.0.2.1", 5060), 0)
    t.incoming(f, register_bytes("bob"))
    t.incoming(f, b"garbage that does not parse\r\n\r\n")
    assert caplog.records == []
    t.incoming(f, register_bytes("alice"))
    (rec,) = caplog.records
    assert rec.name == "sipserver.trace" and rec.levelno == logging.INFO
    assert rec.direction == "in" and rec.flow == f.id and rec.peer == "192.0.2.1:5060"  # type: ignore[attr-defined]
    assert rec.getMessage().endswith(register_bytes("alice").decode())
    # By source: even unparseable bytes are traced.
    t.set(source="192.0.2.1", aor=None, enabled=True)
    t.incoming(f, b"\xffgarbage\r\n\r\n")
    assert len(caplog.records) == 2 and "\ufffdgarbage" in caplog.records[1].getMessage()
    assert t.traced == 2
