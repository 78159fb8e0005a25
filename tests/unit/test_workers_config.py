"""sipserver.workers (issue 20, `run --workers N`): a worker's configuration, the refusals, the
restart backoff, the command line, and the supervisor driving tiny stand-in workers.

The real server under a real supervisor is tests/integration/test_workers.py.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import attrs
import pytest

from sipserver import cli, workers
from sipserver.config import Config, ListenSpec, config_from_dict
from sipserver.workers import Backoff, Supervisor, Worker, WorkerSlot

REDIS = {"store": {"backend": "redis"}}


def cfg_of(**sections: dict[str, object]) -> Config:
    return config_from_dict({**REDIS, **sections})


pytestmark = pytest.mark.usefixtures("restore_logging")  # tests/unit/conftest.py


# ---------------------------------------------------------------------------------------------
# The slot a worker is told in SIPSERVER_WORKER


def test_slot_round_trips_through_its_text() -> None:
    slot = WorkerSlot(2, 4, 40123)
    assert str(slot) == "2:4:40123"
    assert WorkerSlot.parse(str(slot)) == slot


@pytest.mark.parametrize("text", ["", "1:2", "0:2:5000", "3:2:5000", "1:2:0", "1:2:70000", "a:2:5", "1:2:5:6"])
def test_slot_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="SIPSERVER_WORKER"):
        WorkerSlot.parse(text)


# ---------------------------------------------------------------------------------------------
# A worker's configuration


def test_worker_config_adds_node_id_private_listener_and_mgmt_port() -> None:
    cfg = cfg_of(
        server={"listen": ["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060"]}, mgmt={"listen": "127.0.0.1:9060"}
    )
    w = workers.worker_config(cfg, WorkerSlot(3, 4, 41000))
    assert w.cluster.node_id == "w3"
    assert w.cluster.address == "127.0.0.1:41000"
    assert w.server.listen == (*cfg.server.listen, ListenSpec("tcp", "127.0.0.1", 41000))
    assert w.mgmt.listen == "127.0.0.1:9062"
    # Nothing else changes.
    assert attrs.evolve(w, server=cfg.server, cluster=cfg.cluster, mgmt=cfg.mgmt) == cfg


def test_worker_node_id_extends_the_configured_one() -> None:
    cfg = cfg_of(cluster={"node_id": "east"})
    assert workers.worker_config(cfg, WorkerSlot(1, 2, 41000)).cluster.node_id == "east1"


def test_mgmt_port_zero_stays_zero_off_stays_off_and_ipv6_keeps_brackets() -> None:
    assert workers.mgmt_listen(cfg_of(mgmt={"listen": "127.0.0.1:0"}), 2) == "127.0.0.1:0"
    assert workers.mgmt_listen(cfg_of(), 2) == ""
    assert workers.mgmt_listen(cfg_of(mgmt={"listen": "[::1]:9060"}), 2) == "[::1]:9061"


def test_cluster_address_names_the_host_and_first_private_port() -> None:
    """Workers of a node other hosts reach: cluster.address's host, its port + i - 1."""
    cfg = cfg_of(cluster={"address": "10.0.0.5:5090"})
    assert workers.private_ports(cfg, 3) == [5090, 5091, 5092]
    w = workers.worker_config(cfg, WorkerSlot(2, 3, 5091))
    assert w.cluster.address == "10.0.0.5:5091"
    assert w.server.listen[-1] == ListenSpec("tcp", "10.0.0.5", 5091)


def test_picked_private_ports_are_free_distinct_and_not_public() -> None:
    cfg = cfg_of(server={"listen": ["udp:127.0.0.1:5999"]})
    ports = workers.private_ports(cfg, 4)
    assert len(set(ports)) == 4 and 5999 not in ports
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_listening_ports_sees_a_listening_socket() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        listening = workers._listening_ports()
        if listening is None:
            pytest.skip("no /proc/net/tcp here")
        assert port in listening
    assert port not in (workers._listening_ports() or set())


# ---------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_more_than_one_worker_needs_redis(backend: str) -> None:
    cfg = config_from_dict({"store": {"backend": backend}})
    assert workers.refusal(cfg, 2) == (
        '--workers 2 needs store.backend = "redis" (the workers are nodes of a cluster and share '
        f'their bindings in Redis; see docs/cluster.md), got store.backend = "{backend}"'
    )
    assert workers.refusal(cfg, 1) is None


def test_a_port_zero_listener_is_refused_by_name() -> None:
    cfg = cfg_of(server={"listen": ["udp:127.0.0.1:5060", "ws:127.0.0.1:0/sip"]})
    reason = workers.refusal(cfg, 3)
    assert reason is not None and reason.startswith("--workers 3 cannot share listener ws:127.0.0.1:0/sip:")


def test_other_refusals() -> None:
    long = "n" * 31
    assert "shorten cluster.node_id" in (workers.refusal(cfg_of(cluster={"node_id": long}), 10) or "")
    assert workers.refusal(cfg_of(cluster={"node_id": long}), 9) is None
    assert "over 65535" in (workers.refusal(cfg_of(mgmt={"listen": "127.0.0.1:65535"}), 2) or "")
    assert "over 65535" in (workers.refusal(cfg_of(cluster={"address": "10.0.0.5:65535"}), 2) or "")
    clash = cfg_of(server={"listen": ["udp:0.0.0.0:5061"]}, cluster={"address": "10.0.0.5:5060"})
    assert "include listen port 5061" in (workers.refusal(clash, 2) or "")
    assert workers.refusal(cfg_of(), 2) is None


# ---------------------------------------------------------------------------------------------
# Restart backoff


def test_backoff_doubles_to_30_s_and_resets_after_a_60_s_run() -> None:
    b = Backoff()
    assert [b.after_exit(0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert b.after_exit(59.9) == 30
    assert b.after_exit(60.0) == 1
    assert b.after_exit(1.0) == 2


def test_exit_descriptions() -> None:
    assert workers.describe_exit(1) == "exited with status 1"
    assert workers.describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"


# ---------------------------------------------------------------------------------------------
# The command line


@pytest.fixture
def fake_runtime(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    calls: list[Config] = []
    module = types.ModuleType("sipserver.service")
    module.run = lambda cfg: calls.append(cfg) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sipserver.service", module)
    monkeypatch.delenv(workers.WORKER_ENV, raising=False)
    from sipserver.transport import listeners

    monkeypatch.setattr(listeners, "inherited", {})
    return calls


def test_one_worker_is_the_single_process_server(fake_runtime: list[Config]) -> None:
    from sipserver.transport import listeners

    assert cli.main(["run"]) == 0
    assert cli.main(["run", "--workers", "1"]) == 0
    assert fake_runtime == [Config(), Config()]
    assert listeners.inherited == {}


@pytest.mark.parametrize("value", ["0", "-1", "two", "257"])
def test_bad_worker_counts_are_usage_errors(
    value: str, fake_runtime: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "--workers", value]) == 2
    assert "argument --workers: must be a number from 1 to 256" in capsys.readouterr().err
    assert fake_runtime == []


def test_two_workers_without_redis_start_nothing(
    fake_runtime: list[Config], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["run", "--workers", "2", "--data-dir", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.startswith('sipserver: --workers 2 needs store.backend = "redis"')
    assert fake_runtime == [] and not (tmp_path / "d").exists()


def test_a_worker_runs_its_own_config_on_the_sockets_it_inherited(
    fake_runtime: list[Config], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from sipserver.transport import listeners

    path = tmp_path / "c.toml"
    path.write_text('[server]\nlisten = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]\n[store]\nbackend = "redis"\n')
    cfg = config_from_dict({"server": {"listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]}, **REDIS})
    shared = workers.open_shared(cfg)  # what the supervisor passes (port 0: only in this test)
    try:
        monkeypatch.setenv(workers.WORKER_ENV, "2:2:41000")
        monkeypatch.setenv(workers.FDS_ENV, workers.fds_text(shared))
        assert cli.main(["run", "-c", str(path), "--workers", "2"]) == 0
        (wcfg,) = fake_runtime
        assert wcfg.cluster.node_id == "w2" and wcfg.cluster.address == "127.0.0.1:41000"
        adopted = listeners.inherited
        assert list(adopted) == list(cfg.server.listen)  # not the private listener
        assert [[s.fileno() for s in socks] for socks in adopted.values()] == [
            [s.fileno() for s in socks] for socks in shared
        ]
        # Popped: a process the worker starts is no worker.
        assert workers.WORKER_ENV not in os.environ and workers.FDS_ENV not in os.environ
    finally:
        for socks in listeners.inherited.values():
            for raw in socks:
                raw.detach()  # the same descriptors as ``shared``
        for socks in shared:
            for raw in socks:
                raw.close()


def test_shared_sockets_are_bound_with_so_reuseport_and_listening() -> None:
    cfg = cfg_of(server={"listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]})
    first = workers.open_shared(cfg)
    try:
        (udp,), (tcp,) = first
        assert udp.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert tcp.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        port = tcp.getsockname()[1]
        # A second worker's sockets on the same fixed ports.
        again = cfg_of(server={"listen": [f"udp:127.0.0.1:{udp.getsockname()[1]}", f"tcp:127.0.0.1:{port}"]})
        second = workers.open_shared(again)
        for socks in second:
            for raw in socks:
                raw.close()
    finally:
        for socks in first:
            for raw in socks:
                raw.close()


def test_a_port_taken_without_so_reuseport_is_named() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = cfg_of(server={"listen": [f"tcp:127.0.0.1:{port}"]})
        with pytest.raises(OSError, match=f"cannot bind tcp 127.0.0.1 port {port}: Address already in use"):
            workers.open_shared(cfg)


@pytest.mark.parametrize("text", ["", "0=999999", "5=3", "0=x", "1=3"])
def test_bad_fds_are_refused(text: str) -> None:
    cfg = cfg_of(server={"listen": ["udp:127.0.0.1:5070"]})
    with pytest.raises(ValueError, match="SIPSERVER_WORKER_FDS"):
        workers.adopt(cfg, text)


def test_a_worker_with_a_bad_slot_stops(
    fake_runtime: list[Config], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(workers.WORKER_ENV, "3:2:41000")
    assert cli.main(["run"]) == 2
    assert "SIPSERVER_WORKER='3:2:41000' is not INDEX:COUNT:PORT" in capsys.readouterr().err
    assert fake_runtime == []


def test_worker_log_lines_name_the_worker(capsys: pytest.CaptureFixture[str]) -> None:
    cli.setup_logging("info", "text", worker=2)
    logging.getLogger("sipserver.x").info("hello")
    assert capsys.readouterr().err.rstrip().endswith("sipserver.x: hello worker=2")


def test_help_shows_workers_but_not_the_worker_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--workers N" in out and "SIPSERVER_WORKER" not in out


# ---------------------------------------------------------------------------------------------
# The supervisor, with stand-in workers (a few lines of Python each)

# Listens on its private port (so the supervisor sees it up), then waits; exits 0 on SIGTERM.
STAND_IN = textwrap.dedent(
    """
    import os, signal, socket, sys, time
    index, count, port = map(int, os.environ["SIPSERVER_WORKER"].split(":"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    s = socket.socket(); s.bind(("127.0.0.1", port)); s.listen()
    print(f"stand-in {index} pid {os.getpid()}", flush=True)
    while True:
        time.sleep(1)
    """
)


def _supervisor(command: list[str], count: int = 2) -> Supervisor:
    ports = workers.pick_ports("127.0.0.1", count)
    slots = [WorkerSlot(i, count, p) for i, p in enumerate(ports, 1)]
    return Supervisor(command, [Worker(s, f"w{s.index}", ("127.0.0.1", s.port)) for s in slots], stop_timeout=5)


def _later(delay: float, action: object) -> threading.Timer:
    timer = threading.Timer(delay, action)  # type: ignore[arg-type]
    timer.start()
    return timer


def test_every_worker_failing_at_start_up_ends_with_its_status(caplog: pytest.LogCaptureFixture) -> None:
    sup = _supervisor([sys.executable, "-c", "import sys; sys.exit(3)"])
    started = time.monotonic()
    with caplog.at_level(logging.INFO, "sipserver.workers"):
        assert sup.run() == 3
    assert time.monotonic() - started < 10
    assert "every worker failed at start-up (worker 2 exited with status 3)" in caplog.text or (
        "every worker failed at start-up (worker 1 exited with status 3)" in caplog.text
    )


def test_sigterm_stops_the_workers_and_ends_with_0(caplog: pytest.LogCaptureFixture) -> None:
    sup = _supervisor([sys.executable, "-c", STAND_IN])
    pids: list[int] = []

    def stop_once_up() -> None:
        while not all(w.up for w in sup.workers):
            time.sleep(0.05)
        pids.extend(w.proc.pid for w in sup.workers if w.proc is not None)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)

    timer = _later(0, stop_once_up)
    with caplog.at_level(logging.INFO, "sipserver.workers"):
        assert sup.run() == 0
    timer.join()
    assert len(pids) == 2
    assert all(w.proc is not None and w.proc.returncode == 0 for w in sup.workers)
    assert "received SIGTERM, stopping the workers" in caplog.text
    assert "all workers stopped" in caplog.text


def test_a_worker_that_dies_is_restarted_after_its_backoff(caplog: pytest.LogCaptureFixture) -> None:
    sup = _supervisor([sys.executable, "-c", STAND_IN])
    seen: dict[str, float] = {}

    def kill_one_then_stop() -> None:
        while not all(w.up for w in sup.workers):
            time.sleep(0.05)
        first = sup.workers[0].proc
        assert first is not None
        first.kill()
        seen["killed"] = time.monotonic()
        while sup.workers[0].runs < 2 or not sup.workers[0].up:
            time.sleep(0.05)
        seen["up"] = time.monotonic()
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)

    timer = _later(0, kill_one_then_stop)
    with caplog.at_level(logging.INFO, "sipserver.workers"):
        assert sup.run() == 0
    timer.join()
    assert seen["up"] - seen["killed"] >= 1.0  # the first backoff
    assert sup.workers[0].runs == 2 and sup.workers[1].runs == 1
    assert "node w1) was killed by SIGKILL after" in caplog.text
    assert "restarting it in 1 s" in caplog.text
