"""Issue 16: ``limits.max_connections`` against the open-file limit (RLIMIT_NOFILE), and the
refusal lines that name the setting to raise.

At start the soft limit is raised to what max_connections needs (plus 64 for listeners and
files); where the hard limit is too low, max_connections is lowered to fit and a WARNING names
both settings and the numbers (rather than refusing to start: see transport/startup.py). A
connection refused at a limit is logged naming ``limits.max_connections`` or
``limits.max_connections_per_ip`` and its value, rate limited.
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path

import pytest
import trio
from harness import addr, running_server
from transport_fixtures import start_server

from sipserver.config import ListenSpec
from sipserver.outbound.flow import Transport
from sipserver.transport import FlowLimits
from sipserver.transport.startup import FD_HEADROOM, FdPlan, plan_fd_limit

# -- the decision, with made-up limits ---------------------------------------------------------


@pytest.mark.parametrize(
    ("max_connections", "soft", "hard", "expected"),
    [
        # Enough already: nothing to do.
        (1000, 4096, 4096, FdPlan(None, 1000)),
        (1000, None, None, FdPlan(None, 1000)),  # unlimited
        (1000, 1064, 1064, FdPlan(None, 1000)),  # exactly enough
        # The soft limit is raised to what is needed (not to the hard limit).
        (20000, 1024, 524288, FdPlan(20064, 20000)),
        (20000, 1024, None, FdPlan(20064, 20000)),
    ],
)
def test_plan_when_the_hard_limit_suffices(
    max_connections: int, soft: int | None, hard: int | None, expected: FdPlan
) -> None:
    assert plan_fd_limit(max_connections, soft, hard) == expected


def test_plan_when_the_hard_limit_is_too_low_lowers_max_connections_and_says_so() -> None:
    plan = plan_fd_limit(20000, 1024, 4096)
    assert plan.soft == 4096  # as far as it goes
    assert plan.max_connections == 4096 - FD_HEADROOM
    assert plan.warning is not None
    for text in ("limits.max_connections (20000)", "RLIMIT_NOFILE", "4096", "20064", "4032"):
        assert text in plan.warning
    # Soft already at the hard limit: nothing to raise, still lowered.
    plan = plan_fd_limit(20000, 4096, 4096)
    assert plan.soft is None and plan.max_connections == 4032 and plan.warning
    # A hard limit below the headroom still leaves one connection.
    assert plan_fd_limit(100, 10, 10).max_connections == 1


# -- at start-up, in the real server -----------------------------------------------------------


class FakeNofile:
    """RLIMIT_NOFILE as a test wants it; setrlimit records the calls instead of acting."""

    def __init__(self, soft: int, hard: int) -> None:
        self.limits = (soft, hard)
        self.calls: list[tuple[int, int]] = []
        self.real_getrlimit = resource.getrlimit

    def getrlimit(self, which: int) -> tuple[int, int]:
        if which == resource.RLIMIT_NOFILE:
            return self.limits
        return self.real_getrlimit(which)

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        self.calls.append(limits)
        self.limits = limits


async def test_start_with_a_low_hard_limit_serves_fewer_connections_and_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Hard limit 66: 2 connections fit next to the 64 reserved descriptors. The server starts,
    says so naming both settings, and refuses the third connection naming the setting."""
    fake = FakeNofile(soft=20, hard=66)
    monkeypatch.setattr(resource, "getrlimit", fake.getrlimit)
    monkeypatch.setattr(resource, "setrlimit", fake.setrlimit)
    caplog.set_level(logging.INFO, logger="sipserver.transport")
    async with running_server(tmp_path, limits={"max_connections": 5000}) as server:
        monkeypatch.undo()
        assert fake.calls == [(66, 66)]
        assert server.flows.limits.max_connections == 2
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(
            "limits.max_connections (5000)" in w
            and "RLIMIT_NOFILE" in w
            and "66" in w
            and "at most 2 connections" in w
            for w in warnings
        ), warnings
        host, port = addr(server, "tcp")
        first = await trio.open_tcp_stream(host, port)
        second = await trio.open_tcp_stream(host, port)
        with trio.fail_after(2):
            while server.flows.count(Transport.TCP) < 2:
                await trio.sleep(0.01)
        caplog.clear()
        third = await trio.open_tcp_stream(host, port)
        with trio.fail_after(2):
            assert await third.receive_some() == b""  # closed at once
        assert any(
            "refused TCP connection from 127.0.0.1: limits.max_connections (2) reached"
            in r.getMessage()
            for r in caplog.records
        )
        for s in (first, second, third):
            await s.aclose()


async def test_start_raises_the_real_soft_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """For real: with the soft limit lowered to 512, a server configured for 1,000 connections
    raises it to 1,064 and keeps its max_connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1000 + FD_HEADROOM:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} too low for this test")
    caplog.set_level(logging.INFO, logger="sipserver.transport")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    try:
        async with running_server(tmp_path, limits={"max_connections": 1000}) as server:
            assert resource.getrlimit(resource.RLIMIT_NOFILE) == (1000 + FD_HEADROOM, hard)
            assert server.flows.limits.max_connections == 1000
        assert any("from 512 to 1064" in r.getMessage() for r in caplog.records)
        assert not [
            r for r in caplog.records if r.levelno >= logging.WARNING and "RLIMIT" in r.getMessage()
        ]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- the refusal lines name the setting ---------------------------------------------------------


@pytest.mark.parametrize("transport", [Transport.TCP, Transport.WS])
async def test_per_ip_refusal_names_the_setting_and_is_rate_limited(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, transport: Transport
) -> None:
    """An office NAT (or an attacker) opening connection after connection from one address:
    the refusal says which setting to raise, once per 10 s however many are refused."""
    server = await start_server(
        nursery,
        [ListenSpec(transport, "127.0.0.1", 0, "/")],
        limits=FlowLimits(max_connections_per_ip=2),
    )
    host, port = server.addr(transport)
    kept = [await trio.open_tcp_stream(host, port) for _ in range(2)]
    with trio.fail_after(2):
        while server.table.count_for_ip("127.0.0.1") < 2:
            await trio.sleep(0.01)
    caplog.set_level(logging.WARNING, logger="sipserver.transport")
    for _ in range(20):
        refused = await trio.open_tcp_stream(host, port)
        with trio.fail_after(2):
            assert await refused.receive_some() == b""
        await refused.aclose()
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    expected = (
        f"refused {transport.value} connection from 127.0.0.1: limits.max_connections_per_ip (2) "
        "reached (raise it if many clients share this address: a NAT or a load balancer)"
    )
    # One line per 10 s window (two if the test straddles a window's end), not twenty.
    assert lines and len(lines) <= 2 and set(lines) == {expected}, lines
    for s in kept:
        await s.aclose()
