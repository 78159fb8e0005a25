"""`sipserver run --workers N` (issue 20): a supervisor and N worker processes sharing the listen
ports with SO_REUSEPORT, each a cluster node with a private TCP listener (docs/workers.md).

The server runs as a real subprocess (``python -m sipserver run -c FILE --workers 2``) against a
real redis-server (tests/integration/redis_fixture.py), on loopback ports picked free; the tests
look at what is on the wire (OPTIONS and REGISTER on the shared and the private ports, the
management API of each worker) and at the processes (PIDs, signals, exit status). They do not
depend on the cluster routing between the workers.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis_fixture import RedisServer, free_tcp_port, redis  # noqa: F401

from sipserver.sip import Response, parse_message

START_TIMEOUT = 20.0


def _free_pair() -> int:
    """A port P with P and P + 1 free for TCP and UDP on 127.0.0.1 (mgmt.listen port + i - 1)."""
    for _ in range(100):
        port = free_tcp_port()
        if port < 65535 and all(_free(p) for p in (port, port + 1)):
            return port
    raise AssertionError("no two consecutive free ports")


def _free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sipserver.toml"
    path.write_text(body)
    return path


def _redis_config(tmp_path: Path, redis_url: str, port: int, mgmt: int | None = None) -> Path:
    body = (
        f'[server]\nlisten = ["udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}"]\n'
        f'domains = ["example.com"]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[store]\nbackend = "redis"\nredis_url = "{redis_url}"\n'
    )
    if mgmt is not None:
        body += f'[mgmt]\nlisten = "127.0.0.1:{mgmt}"\n'
    return _config(tmp_path, body)


def _command(config: Path, workers: int = 2) -> list[str]:
    return [sys.executable, "-m", "sipserver", "run", "-c", str(config), "--workers", str(workers)]


class Supervised:
    """``sipserver run --workers 2`` as a subprocess; its stderr (all processes share it) in a file."""

    def __init__(self, tmp_path: Path, config: Path) -> None:
        self.log_path = tmp_path / "workers.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                _command(config), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = START_TIMEOUT) -> list[re.Match[str]]:
        """The first ``count`` matches of ``pattern`` in the log, waiting for them."""
        deadline = time.monotonic() + timeout
        while True:
            found = list(re.finditer(pattern, self.log()))
            if len(found) >= count:
                return found
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {count} x {pattern!r} in the log:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def pids(self) -> dict[int, int]:
        """Worker index -> pid of its latest process."""
        return {int(m[1]): int(m[2]) for m in re.finditer(r"worker (\d+) started: pid (\d+)", self.log())}

    def private_ports(self) -> dict[int, int]:
        return {
            int(m[1]): int(m[2])
            for m in re.finditer(r"worker (\d+) of 2: node w\d+, cluster address 127\.0\.0\.1:(\d+)", self.log())
        }

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the supervisor did not stop on SIGTERM:\n{self.log()[-4000:]}") from None


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[Path], Supervised]]:
    started: list[Supervised] = []

    def starter(config: Path) -> Supervised:
        sup = Supervised(tmp_path, config)
        started.append(sup)
        sup.wait_for(r"worker \d+ is up", count=2)
        return sup

    yield starter
    for sup in started:  # a failed test must not leave workers behind
        for pid in sup.pids().values():
            _kill(pid)
        sup.stop()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not yet reaped by the supervisor) is dead too.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _options(transport: str, via_host: str = "127.0.0.1") -> bytes:
    tag = secrets.token_hex(4)
    return (
        f"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} {via_host}:9;branch=z9hG4bK{tag};rport\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:127.0.0.1>\r\nFrom: <sip:t@127.0.0.1>;tag={tag}\r\n"
        f"Call-ID: w-{tag}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _udp(port: int, data: bytes, tries: int = 3) -> Response:
    """Send ``data`` from a fresh socket (a new 4-tuple each time), resending like a UAC."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        for _ in range(tries):
            s.sendto(data, ("127.0.0.1", port))
            try:
                msg = parse_message(s.recvfrom(65536)[0])
            except TimeoutError:
                continue
            assert isinstance(msg, Response)
            return msg
    raise AssertionError(f"no answer on udp port {port}")


def _tcp(port: int, data: bytes) -> Response:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, "connection closed before a response"
            buf += chunk
    msg = parse_message(buf)
    assert isinstance(msg, Response)
    return msg


def _register(user: str) -> bytes:
    tag = secrets.token_hex(4)
    return (
        f"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{tag};rport\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:{user}@example.com>\r\nFrom: <sip:{user}@example.com>;tag={tag}\r\n"
        f"Call-ID: wreg-{tag}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@127.0.0.1:5999>\r\n"
        f"Expires: 600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _mgmt_info(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=5) as resp:
        info: dict[str, object] = json.loads(resp.read())
    return info


def test_two_workers_share_the_ports_and_stop_on_sigterm(
    tmp_path: Path, redis: RedisServer, start  # noqa: F811
) -> None:
    """Two worker processes, each on its private port and on the shared UDP/TCP port; REGISTER
    over UDP to the shared port is stored in Redis; each worker's management API is on
    mgmt.listen's port + (i - 1); SIGHUP reaches both; SIGTERM stops everything with 0."""
    port, mgmt = free_tcp_port(), _free_pair()
    sup = start(_redis_config(tmp_path, redis.url, port, mgmt))
    pids, private = sup.pids(), sup.private_ports()
    assert sorted(pids) == sorted(private) == [1, 2]
    assert len(set(pids.values())) == 2 and sup.proc.pid not in pids.values()
    assert port not in private.values() and private[1] != private[2]
    for index in (1, 2):
        assert _tcp(private[index], _options("TCP")).status == 200
        info = _mgmt_info(mgmt + index - 1)
        assert info["pid"] == pids[index]
        assert f"tcp:127.0.0.1:{private[index]}" in info["listeners"]  # type: ignore[operator]
        assert f"udp:127.0.0.1:{port}" in info["listeners"]  # type: ignore[operator]
    assert _udp(port, _options("UDP")).status == 200
    assert _tcp(port, _options("TCP")).status == 200
    assert _udp(port, _register("alice")).status == 200
    assert any("alice" in key for key in redis.client().keys("*binding:*"))

    sup.proc.send_signal(signal.SIGHUP)
    sup.wait_for(r"credentials reload requested.* worker=\d", count=2)
    assert sup.stop() == 0
    assert not any(_alive(pid) for pid in pids.values())
    out = sup.log()
    assert "all workers stopped" in out and "Traceback" not in out
    assert re.search(r"worker 2 of 2: node w2, .*management API 127\.0\.0\.1:\d+ \(mgmt\.listen port \+ 1\)", out)


def _udp_owners(mgmt: int, clients: list[socket.socket]) -> list[int]:
    """Which worker (1 or 2) holds the UDP flow of each client, from each worker's GET /flows."""
    owner: dict[int, int] = {}
    for index in (1, 2):
        with urllib.request.urlopen(f"http://127.0.0.1:{mgmt + index - 1}/flows", timeout=5) as resp:
            for flow in json.loads(resp.read())["flows"]:
                if flow["transport"] == "udp":
                    owner[int(flow["peer"].rpartition(":")[2])] = index
    return [owner.get(c.getsockname()[1], 0) for c in clients]


def _udp_from(client: socket.socket, port: int, data: bytes) -> Response:
    client.settimeout(8.0)  # a datagram for a worker being restarted waits in its socket
    client.sendto(data, ("127.0.0.1", port))
    msg = parse_message(client.recvfrom(65536)[0])
    assert isinstance(msg, Response)
    return msg


def test_a_killed_worker_is_restarted_and_every_peer_keeps_its_worker(
    tmp_path: Path, redis: RedisServer, start  # noqa: F811
) -> None:
    """SIGKILL of worker 1: the supervisor logs the signal and starts worker 1 again after its
    1 s backoff, with the same private port and the same shared sockets (the supervisor holds
    them), so the kernel hands every UDP peer to the same worker as before the kill; what was
    sent to worker 1 meanwhile is answered once it is back, the other worker answers at once."""
    port, mgmt = free_tcp_port(), _free_pair()
    sup = start(_redis_config(tmp_path, redis.url, port, mgmt))
    before, private = sup.pids(), sup.private_ports()
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
    try:
        for c in clients:
            c.bind(("127.0.0.1", 0))
            assert _udp_from(c, port, _options("UDP")).status == 200
        owners = _udp_owners(mgmt, clients)
        assert set(owners) <= {1, 2} and 0 not in owners

        os.kill(before[1], signal.SIGKILL)
        sup.wait_for(rf"worker 1 \(pid {before[1]}, node w1\) was killed by SIGKILL after [\d.]+ s; restarting it in 1 s")
        assert _tcp(port, _options("TCP")).status == 200  # new connections: the live worker
        for c in clients:
            assert _udp_from(c, port, _options("UDP")).status == 200
        sup.wait_for(r"worker 1 is up", count=2)
        after = sup.pids()
        assert after[1] != before[1] and after[2] == before[2]
        assert _alive(after[1]) and not _alive(before[1])
        assert _tcp(private[1], _options("TCP")).status == 200  # the same private port again
        assert sup.private_ports() == private
        assert _udp_owners(mgmt, clients) == owners
    finally:
        for c in clients:
            c.close()
    assert sup.stop() == 0
    assert not any(_alive(pid) for pid in after.values())


def test_a_port_in_use_stops_the_supervisor_before_any_worker(tmp_path: Path) -> None:
    """The shared TCP port is taken by a socket without SO_REUSEPORT: the supervisor, which binds
    the shared sockets, says so and exits 1 without starting a worker."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            _command(_redis_config(tmp_path, "redis://127.0.0.1:9/0", port)), capture_output=True, text=True,
            timeout=60, cwd=tmp_path,
        )
    assert done.returncode == 1, done.stderr
    assert f"cannot bind tcp 127.0.0.1 port {port}: Address already in use" in done.stderr
    assert "started" not in done.stderr


def test_every_worker_failing_at_start_up_stops_the_supervisor(tmp_path: Path) -> None:
    """Redis is not there: each worker fails loading the bindings, before it is up; the
    supervisor exits non-zero, the workers' error on the shared stderr."""
    url = f"redis://127.0.0.1:{free_tcp_port()}/0"
    done = subprocess.run(
        _command(_redis_config(tmp_path, url, free_tcp_port())), capture_output=True, text=True,
        timeout=60, cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    assert f"store.redis_url {url}" in done.stderr
    assert re.search(r"every worker failed at start-up \(worker \d exited with status 1\)", done.stderr)
    assert "worker 1 started" in done.stderr and "worker 2 started" in done.stderr


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '[server]\nlisten = ["udp:127.0.0.1:5999"]\n',
            'sipserver: --workers 2 needs store.backend = "redis" (the workers are nodes of a '
            "cluster and share their bindings in Redis; see docs/cluster.md), got "
            'store.backend = "sqlite"',
        ),
        (
            '[server]\nlisten = ["udp:127.0.0.1:5999", "tcp:127.0.0.1:0"]\n[store]\nbackend = "redis"\n',
            "sipserver: --workers 2 cannot share listener tcp:127.0.0.1:0: port 0 would give each "
            "worker a port of its own; give it a fixed port",
        ),
    ],
    ids=["sqlite", "port-0"],
)
def test_refused_before_anything_starts(tmp_path: Path, body: str, message: str) -> None:
    done = subprocess.run(
        _command(_config(tmp_path, body)), capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert done.returncode == 2
    assert done.stderr.strip() == message
    assert not (tmp_path / "sipserver-data").exists()  # nothing was started or created


def _tcp_recv(conn: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        assert chunk, "connection closed"
        buf += chunk
    return buf


def _flow_owner(mgmt: int, local_port: int) -> int:
    for index in (1, 2):
        with urllib.request.urlopen(f"http://127.0.0.1:{mgmt + index - 1}/flows", timeout=5) as resp:
            if any(f["peer"].endswith(f":{local_port}") for f in json.loads(resp.read())["flows"]):
                return index
    return 0


def test_a_phone_on_one_worker_gets_a_message_sent_through_the_other(
    tmp_path: Path, redis: RedisServer, start  # noqa: F811
) -> None:
    """End to end with the cluster routing (docs/cluster.md): alice registers over UDP and her
    flow is held by the worker the kernel picked; bob, on a TCP connection held by the other
    worker, sends her a MESSAGE: it reaches alice's UDP socket, and her 200 reaches bob."""
    port, mgmt = free_tcp_port(), _free_pair()
    sup = start(_redis_config(tmp_path, redis.url, port, mgmt))
    # Each worker knows the other once it has read its heartbeat key (sipserver.cluster).
    sup.wait_for(r"cluster: node w\d is alive", count=2, timeout=10)
    alice = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    alice.bind(("127.0.0.1", 0))
    alice.settimeout(5)
    conns: list[socket.socket] = []
    try:
        a_port = alice.getsockname()[1]
        tag = secrets.token_hex(4)
        alice.sendto(
            (
                f"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{a_port};branch=z9hG4bK{tag};rport\r\n"
                f"Max-Forwards: 70\r\nTo: <sip:alice@example.com>\r\nFrom: <sip:alice@example.com>;tag={tag}\r\n"
                f"Call-ID: a-{tag}\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@127.0.0.1:{a_port};ob>;reg-id=1;"
                f'+sip.instance="<urn:uuid:00000000-0000-4000-8000-{a_port:012d}>"\r\n'
                f"Supported: path, outbound\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            ("127.0.0.1", port),
        )
        reply = parse_message(alice.recvfrom(65536)[0])
        assert isinstance(reply, Response) and reply.status == 200
        holder = _flow_owner(mgmt, a_port)
        assert holder in (1, 2)
        bob = None
        for _ in range(40):  # new connections until one lands on the other worker
            conn = socket.create_connection(("127.0.0.1", port), timeout=5)
            conns.append(conn)
            conn.sendall(b"\r\n\r\n")  # a keepalive: the connection is a flow, nothing else
            assert conn.recv(16) == b"\r\n"
            if _flow_owner(mgmt, conn.getsockname()[1]) == 3 - holder:
                bob = conn
                break
        assert bob is not None, "no TCP connection landed on the other worker"
        b_port = bob.getsockname()[1]
        bob.sendall(
            (
                f"MESSAGE sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:{b_port};branch=z9hG4bK{tag}m;rport\r\n"
                f"Max-Forwards: 70\r\nTo: <sip:alice@example.com>\r\nFrom: <sip:bob@example.com>;tag={tag}b\r\n"
                f"Call-ID: m-{tag}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
            ).encode()
        )
        try:
            data, server = alice.recvfrom(65536)
        except TimeoutError:
            bob.settimeout(1)
            raise AssertionError(f"alice got nothing; bob got {_tcp_recv(bob).decode()}") from None
        request = parse_message(data)
        assert not isinstance(request, Response) and request.method == "MESSAGE"
        assert request.body == b"hi"
        alice.sendto(_answer_200(data), server)
        answer = parse_message(_tcp_recv(bob))
        assert isinstance(answer, Response) and answer.status == 200
    finally:
        alice.close()
        for conn in conns:
            conn.close()


def _answer_200(request: bytes) -> bytes:
    """A 200 to ``request``: its Via, From, To, Call-ID and CSeq lines copied."""
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    keep = [line for line in head if line.split(b":", 1)[0].strip().lower() in (b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq")]
    return b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n"
