"""``sipserver run --workers N``: one supervisor process and N worker processes on one host.

Each worker is a whole server and a node of the cluster (docs/workers.md, docs/cluster.md). The
supervisor binds the public listen ports N times with SO_REUSEPORT, one set of sockets per
worker, and hands each worker its set (inherited file descriptors); the kernel hashes each UDP
4-tuple and each TCP connection to one socket of the group, so to one worker. Each worker also
binds a private TCP listener of its own, its ``cluster.address``, where the other workers forward
requests for the flows it holds.

The supervisor is plain ``subprocess`` and signals (no trio): it starts the workers as
``python -m sipserver <the same arguments>`` with ``SIPSERVER_WORKER=i:N:PORT`` and
``SIPSERVER_WORKER_FDS`` in their environment, forwards SIGINT, SIGTERM and SIGHUP to them, and
restarts one that dies with a backoff.

Invariants:
- nothing is started unless ``refusal`` found nothing wrong with the configuration: N > 1 needs
  ``store.backend = "redis"`` (an SQLite file shared by processes tells none of them about the
  others' writes, so each worker's in-memory view of the bindings would drift) and fixed ports;
- the supervisor keeps every worker's sockets open for as long as it runs: a dead worker's
  sockets stay in their SO_REUSEPORT groups, so the kernel's choice of worker for a UDP peer or
  a connection never changes (packets for a dead worker wait in its socket for its restart,
  which gets the same sockets, the same private port and the same node id);
- a worker dies with the supervisor (Linux PR_SET_PDEATHSIG), so no orphan keeps a shared port;
- workers run in their own process group: a terminal's Ctrl-C reaches the supervisor alone,
  which forwards it once (a second SIGINT would cut a worker's shutdown short).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from sipserver.config import Config, ListenSpec, parse_host_port

__all__ = [
    "FDS_ENV",
    "WORKER_ENV",
    "Backoff",
    "Supervisor",
    "Worker",
    "WorkerSlot",
    "become_worker",
    "mgmt_listen",
    "open_shared",
    "private_address",
    "private_ports",
    "refusal",
    "supervise",
    "worker_config",
]

log = logging.getLogger("sipserver.workers")

WORKER_ENV = "SIPSERVER_WORKER"
FDS_ENV = "SIPSERVER_WORKER_FDS"  # LISTEN_INDEX=FD,FD;... : the worker's shared sockets
MAX_WORKERS = 256
# While a worker is starting, its private port is looked at this often: once it listens the
# worker has bound every listener (they are bound together) and is up.
PROBE_INTERVAL = 0.05
_TCP_LISTEN = "0A"  # the state column of /proc/net/tcp (include/net/tcp_states.h)
# Seconds a worker's processes get to stop after SIGTERM/SIGINT before they are killed.
STOP_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# As sipserver.transport.listeners sets them on the sockets it binds.
_UDP_RCVBUF = 4 * 1024 * 1024
_BACKLOG = 1024


@attrs.frozen
class WorkerSlot:
    """Worker ``index`` (1..count) of ``count``, with its private cluster ``port``."""

    index: int
    count: int
    port: int

    def __str__(self) -> str:
        return f"{self.index}:{self.count}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> WorkerSlot:
        """The slot ``SIPSERVER_WORKER`` names: ``INDEX:COUNT:PORT``; ValueError otherwise."""
        parts = text.split(":")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"{WORKER_ENV}={text!r} is not INDEX:COUNT:PORT")
        index, count, port = (int(p) for p in parts)
        if not 1 <= index <= count or not 0 < port < 65536:
            raise ValueError(f"{WORKER_ENV}={text!r} is not INDEX:COUNT:PORT")
        return cls(index, count, port)


# --------------------------------------------------------------------------------------------
# The configuration of one worker


def node_id(cfg: Config, index: int) -> str:
    """Worker ``index``'s node name: ``cluster.node_id`` (``w`` if empty) and the index."""
    return f"{cfg.cluster.node_id or 'w'}{index}"


def _host_port_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def private_address(cfg: Config, slot: WorkerSlot) -> tuple[str, int]:
    """Where worker ``slot`` is reached by the other nodes: the host of ``cluster.address``
    (127.0.0.1 when empty) and the slot's port."""
    host = parse_host_port(cfg.cluster.address)[0] if cfg.cluster.address else "127.0.0.1"
    return host, slot.port


def private_ports(cfg: Config, count: int) -> list[int]:
    """The workers' private ports: ``cluster.address``'s port plus index - 1 when it is set
    (workers of nodes on several hosts), else free loopback ports picked now."""
    if cfg.cluster.address:
        first = parse_host_port(cfg.cluster.address)[1]
        return list(range(first, first + count))
    return pick_ports("127.0.0.1", count, avoid={s.port for s in cfg.server.listen})


def mgmt_listen(cfg: Config, index: int) -> str:
    """Worker ``index``'s management API: ``mgmt.listen`` with its port plus index - 1 (port
    0 stays 0: each worker gets a free port); "" when the API is off."""
    address = cfg.mgmt.address
    if address is None:
        return ""
    host, port = address
    return _host_port_text(host, port + index - 1 if port else 0)


def worker_config(cfg: Config, slot: WorkerSlot) -> Config:
    """``cfg`` as worker ``slot`` runs it: its own node id, its private TCP listener appended to
    server.listen and named in cluster.address, and its own management port."""
    host, port = private_address(cfg, slot)
    private = ListenSpec("tcp", host, port)
    return attrs.evolve(
        cfg,
        server=attrs.evolve(cfg.server, listen=(*cfg.server.listen, private)),
        cluster=attrs.evolve(
            cfg.cluster, node_id=node_id(cfg, slot.index), address=_host_port_text(host, port)
        ),
        mgmt=attrs.evolve(cfg.mgmt, listen=mgmt_listen(cfg, slot.index)),
    )


def refusal(cfg: Config, count: int) -> str | None:
    """Why ``count`` workers cannot run ``cfg`` (one sentence naming what is needed), or None."""
    flag = f"--workers {count}"
    if count <= 1:
        return None
    if cfg.store.backend != "redis":
        return (
            f'{flag} needs store.backend = "redis" (the workers are nodes of a cluster and share '
            f"their bindings in Redis; see docs/cluster.md), got store.backend = "
            f'"{cfg.store.backend}"'
        )
    if not hasattr(socket, "SO_REUSEPORT"):
        return f"{flag}: this system has no SO_REUSEPORT, so the workers cannot share ports"
    for spec in cfg.server.listen:
        if spec.port == 0:
            return (
                f"{flag} cannot share listener {spec}: port 0 would give each worker a port "
                f"of its own; give it a fixed port"
            )
    if len(node_id(cfg, count)) > 32:
        return f"{flag}: node id {node_id(cfg, count)!r} is over 32 characters; shorten cluster.node_id"
    address = cfg.mgmt.address
    if address is not None and address[1] and address[1] + count - 1 > 65535:
        return f"{flag}: mgmt.listen port {address[1]} + {count - 1} is over 65535"
    if cfg.cluster.address:
        _, first = parse_host_port(cfg.cluster.address)
        private = set(range(first, first + count))
        if first + count - 1 > 65535:
            return f"{flag}: cluster.address port {first} + {count - 1} is over 65535"
        clash = sorted(private & {s.port for s in cfg.server.listen})
        if clash:
            return (
                f"{flag}: cluster.address gives worker ports {first}..{first + count - 1}, "
                f"which include listen port {clash[0]}; the workers' private ports must be "
                f"free of the shared ones"
            )
    return None


def become_worker(cfg: Config, slot: WorkerSlot, fds: str) -> Config:
    """In a worker process, before the server starts: adopt the shared sockets the supervisor
    passed (``fds``, the value of SIPSERVER_WORKER_FDS) and return the worker's configuration.
    ValueError if ``fds`` does not name sockets for every listener."""
    from sipserver.transport import listeners  # lazy: the supervisor never imports trio

    listeners.inherited = adopt(cfg, fds)
    wcfg = worker_config(cfg, slot)
    mgmt = wcfg.mgmt.listen
    log.info(
        "worker %d of %d: node %s, cluster address %s%s",
        slot.index,
        slot.count,
        wcfg.cluster.node_id,
        wcfg.cluster.address,
        f", management API {mgmt} (mgmt.listen port + {slot.index - 1})" if mgmt else "",
    )
    return wcfg


def fds_text(shared: Sequence[Sequence[socket.socket]]) -> str:
    """SIPSERVER_WORKER_FDS for sockets of each listener: ``0=5,6;1=7``."""
    return ";".join(
        f"{index}={','.join(str(s.fileno()) for s in socks)}" for index, socks in enumerate(shared)
    )


def adopt(cfg: Config, text: str) -> dict[ListenSpec, list[socket.socket]]:
    """The sockets ``text`` (SIPSERVER_WORKER_FDS) names, by the listener they serve."""
    adopted: dict[ListenSpec, list[socket.socket]] = {}
    specs = cfg.server.listen
    try:
        for item in text.split(";") if text else []:
            index, _, fds = item.partition("=")
            spec = specs[int(index)]
            adopted[spec] = [socket.socket(fileno=int(fd)) for fd in fds.split(",")]
    except (ValueError, IndexError, OSError) as exc:
        raise ValueError(f"{FDS_ENV}={text!r} does not name this worker's sockets ({exc})") from None
    missing = [str(spec) for spec in specs if spec not in adopted]
    if missing:
        raise ValueError(f"{FDS_ENV}={text!r} has no sockets for {', '.join(missing)}")
    for socks in adopted.values():
        for raw in socks:
            raw.setblocking(False)
    return adopted


def open_shared(cfg: Config) -> list[list[socket.socket]]:
    """One worker's sockets of every public listener (in ``server.listen`` order), bound with
    SO_REUSEPORT and listening; OSError naming the listener if one cannot be bound. The socket
    options are those sipserver.transport.listeners gives a socket it binds itself."""
    opened: list[list[socket.socket]] = []
    try:
        for spec in cfg.server.listen:
            socks: list[socket.socket] = []
            opened.append(socks)
            _bind_shared(spec, socks)
    except BaseException:
        for socks in opened:
            for raw in socks:
                raw.close()
        raise
    return opened


def _bind_shared(spec: ListenSpec, socks: list[socket.socket]) -> None:
    datagram = not spec.is_stream
    kind = socket.SOCK_DGRAM if datagram else socket.SOCK_STREAM
    try:
        infos = socket.getaddrinfo(spec.host or None, spec.port, type=kind, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot resolve listen address {spec.host!r}: {exc}") from exc
    seen: set[tuple[int, str]] = set()
    for family, type_, proto, _, sockaddr in infos:
        key = (int(family), str(sockaddr[0]))
        if key in seen:
            continue
        seen.add(key)
        raw = socket.socket(family, type_, proto)
        socks.append(raw)
        if family == socket.AF_INET6:
            raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if datagram:
            with contextlib.suppress(OSError):  # the kernel caps it; not fatal
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RCVBUF)
        else:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            raw.bind(sockaddr)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot bind {spec.transport} {sockaddr[0]} port {spec.port}: {exc.strerror}",
            ) from exc
        if not datagram:
            raw.listen(_BACKLOG)


# --------------------------------------------------------------------------------------------
# The supervisor


@attrs.define
class Backoff:
    """Restart delays of one worker: ``initial`` doubling to ``maximum``, back to ``initial``
    once a run lasted ``reset_after`` seconds."""

    initial: float = 1.0
    maximum: float = 30.0
    reset_after: float = 60.0
    current: float = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.current = self.initial

    def after_exit(self, ran_for: float) -> float:
        """The delay before restarting a worker that ran ``ran_for`` seconds."""
        if ran_for >= self.reset_after:
            self.current = self.initial
        delay = self.current
        self.current = min(self.current * 2, self.maximum)
        return delay


@attrs.define
class Worker:
    """One worker as the supervisor sees it: what it is, and its current process."""

    slot: WorkerSlot
    node: str
    address: tuple[str, int]  # its private listener, probed to tell it is up
    shared: list[list[socket.socket]] = attrs.Factory(list)  # per listener, kept open here
    backoff: Backoff = attrs.Factory(Backoff)
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    up: bool = False  # this run's listeners are bound
    runs: int = 0
    restart_at: float | None = None
    failed_start: bool = False  # its first run ended before it was up


def describe_exit(code: int) -> str:
    """``exited with status 1`` or ``was killed by SIGKILL`` for a Popen return code."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


def _pdeathsig() -> Callable[..., Any] | None:
    """libc's prctl, looked up before any fork (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl: Callable[..., Any] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


class Supervisor:
    """Runs ``command`` once per slot (``SIPSERVER_WORKER`` set), restarts workers that die and
    forwards signals; ``run`` returns the supervisor's exit status."""

    def __init__(
        self,
        command: Sequence[str],
        workers: Sequence[Worker],
        *,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.command = list(command)
        self.workers = list(workers)
        self.stop_timeout = stop_timeout
        self._signals: list[int] = []
        self._prctl = _pdeathsig()

    # ------------------------------------------------------------------ processes
    def _spawn(self, worker: Worker) -> None:
        env = dict(os.environ)
        env[WORKER_ENV] = str(worker.slot)
        env[FDS_ENV] = fds_text(worker.shared)
        parent, prctl = os.getpid(), self._prctl

        def in_child() -> None:
            os.setpgid(0, 0)
            if prctl is not None:
                prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
                if os.getppid() != parent:  # the supervisor died before prctl: go too
                    os._exit(1)

        worker.restart_at = None
        worker.up = False
        worker.runs += 1
        worker.started = time.monotonic()
        worker.proc = subprocess.Popen(
            self.command,
            env=env,
            stdin=subprocess.DEVNULL,
            pass_fds=[raw.fileno() for socks in worker.shared for raw in socks],
            preexec_fn=in_child,
        )
        log.info(
            "worker %d started: pid %d, node %s", worker.slot.index, worker.proc.pid, worker.node
        )

    def _probe(self) -> None:
        """Note the workers whose private port now listens."""
        starting = [w for w in self._live() if not w.up]
        if not starting:
            return
        listening = _listening_ports()
        for worker in starting:
            if listening is not None:
                if worker.address[1] not in listening:
                    continue
            else:  # no /proc: a connection the worker accepts (and logs as a closed flow)
                try:
                    socket.create_connection(worker.address, timeout=0.5).close()
                except OSError:
                    continue
            worker.up = True
            log.info(
                "worker %d is up (%.1f s after its start)",
                worker.slot.index,
                time.monotonic() - worker.started,
            )

    def _live(self) -> list[Worker]:
        return [w for w in self.workers if w.proc is not None and w.proc.poll() is None]

    def _send(self, signum: int) -> None:
        for worker in self._live():
            assert worker.proc is not None
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signum)

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        """Start every worker and supervise them until a SIGINT/SIGTERM (then 0 once they all
        stopped, 1 if one had to be killed) or until every worker failed at start-up, that is
        exited before it was up (then the last one's exit status, at least 1)."""
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)
        old_handlers = {s: signal.getsignal(s) for s in watched}
        old_wakeup = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        try:
            for s in watched:
                signal.signal(s, self._on_signal)
            for worker in self.workers:
                self._spawn(worker)
            return self._supervise(rfd)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, handler in old_handlers.items():
                signal.signal(s, handler)
            os.close(rfd)
            os.close(wfd)
            for worker in self._live():  # only after an exception: never leave workers behind
                assert worker.proc is not None
                worker.proc.kill()
                worker.proc.wait()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _wait(self, rfd: int, timeout: float | None) -> None:
        """Sleep until a signal (SIGCHLD included) or ``timeout``."""
        if timeout is None or timeout > 0:
            select.select([rfd], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(rfd, 512):
                pass

    def _supervise(self, rfd: int) -> int:
        while True:
            wake = [w.restart_at for w in self.workers if w.restart_at is not None]
            if any(not w.up for w in self._live()):
                wake.append(time.monotonic() + PROBE_INTERVAL)
            self._wait(rfd, None if not wake else max(0.0, min(wake) - time.monotonic()))
            signals, self._signals = self._signals, []
            for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("received SIGHUP, passing it to the workers")
                    self._send(signal.SIGHUP)
                elif signum in (signal.SIGINT, signal.SIGTERM):
                    log.info("received %s, stopping the workers", signal.Signals(signum).name)
                    return self._stop(rfd, signum)
            failed = self._reap()
            if failed is not None:
                return failed
            self._probe()
            now = time.monotonic()
            for worker in self.workers:
                if worker.restart_at is not None and worker.restart_at <= now:
                    self._spawn(worker)

    def _reap(self) -> int | None:
        """Note the workers that exited and schedule their restart; an exit status when every
        worker failed at start-up."""
        now = time.monotonic()
        for worker in self.workers:
            proc = worker.proc
            if proc is None or proc.poll() is None:
                continue
            worker.proc = None
            ran_for = now - worker.started
            code = proc.returncode
            if worker.runs == 1 and not worker.up:
                worker.failed_start = True
            if all(w.failed_start for w in self.workers):
                log.error(
                    "every worker failed at start-up (worker %d %s); see the errors above",
                    worker.slot.index,
                    describe_exit(code),
                )
                self._stop_now()
                return code if code > 0 else 1
            delay = worker.backoff.after_exit(ran_for)
            worker.restart_at = now + delay
            log.warning(
                "worker %d (pid %d, node %s) %s after %.1f s; restarting it in %g s",
                worker.slot.index,
                proc.pid,
                worker.node,
                describe_exit(code),
                ran_for,
                delay,
            )
        return None

    def _stop_now(self) -> None:
        self._send(signal.SIGTERM)
        for worker in self._live():
            assert worker.proc is not None
            try:
                worker.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()

    def _stop(self, rfd: int, signum: int) -> int:
        """Pass ``signum`` on, wait for every worker (a second SIGINT/SIGTERM is passed on too),
        kill the ones still running after ``stop_timeout``."""
        for worker in self.workers:
            worker.restart_at = None
        self._send(signum)
        deadline = time.monotonic() + self.stop_timeout
        status = 0
        while self._live():
            left = deadline - time.monotonic()
            if left <= 0:
                for worker in self._live():
                    assert worker.proc is not None
                    log.error(
                        "worker %d (pid %d) did not stop within %g s; killing it",
                        worker.slot.index,
                        worker.proc.pid,
                        self.stop_timeout,
                    )
                    worker.proc.kill()
                    worker.proc.wait()
                status = 1
                break
            self._wait(rfd, left)
            signals, self._signals = self._signals, []
            for again in signals:
                if again in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    self._send(again)
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode not in (0, None):
                log.warning(
                    "worker %d %s while stopping",
                    worker.slot.index,
                    describe_exit(worker.proc.returncode),
                )
        log.info("all workers stopped")
        return status


def _listening_ports() -> set[int] | None:
    """The local ports of listening TCP sockets (Linux /proc/net/tcp and tcp6), or None where
    there is no such file. Reading it disturbs nobody, unlike a probe connection."""
    ports: set[int] = set()
    found = False
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name, encoding="ascii") as table:
                next(table, None)  # the header line
                for line in table:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == _TCP_LISTEN:
                        ports.add(int(fields[1].rpartition(":")[2], 16))
        except OSError:
            continue
        found = True
    return ports if found else None


def pick_ports(host: str, count: int, avoid: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """``count`` distinct TCP ports free on ``host`` now and not in ``avoid`` (the public
    ports, which may not be bound yet); all are held open while picking."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket(family, socket.SOCK_STREAM)
            held.append(s)
            s.bind((host, 0))
            port = int(s.getsockname()[1])
            if port not in avoid:
                ports.append(port)
        return ports
    finally:
        for s in held:
            s.close()


def supervise(cfg: Config, count: int, argv: Sequence[str]) -> int:
    """``sipserver run --workers N`` (N > 1, ``refusal`` found nothing): bind the shared
    sockets, start the workers as ``python -m sipserver ARGV`` and supervise them; returns the
    exit status."""
    if not cfg.outbound.secret:
        # Every worker must mint and verify the same flow tokens: create the key file once,
        # here, instead of N workers racing to (keyfile settles the race too, but one error
        # message is better than N).
        from sipserver.outbound.keyfile import KeyFileError, load_or_create_key

        try:
            load_or_create_key(cfg.flow_token_key_path)
        except KeyFileError as exc:
            log.error("%s", exc)
            return 1
    ports = private_ports(cfg, count)
    workers: list[Worker] = []
    try:
        for index, port in enumerate(ports, 1):
            slot = WorkerSlot(index, count, port)
            worker = Worker(slot, node_id(cfg, index), private_address(cfg, slot))
            workers.append(worker)
            worker.shared = open_shared(cfg)
        log.info(
            "starting %d workers (nodes %s) sharing %s",
            count,
            ", ".join(w.node for w in workers),
            ", ".join(str(s) for s in cfg.server.listen),
        )
        return Supervisor([sys.executable, "-m", "sipserver", *argv], workers).run()
    except OSError as exc:
        log.error("%s", exc)
        return 1
    finally:
        for worker in workers:
            for socks in worker.shared:
                for raw in socks:
                    raw.close()
