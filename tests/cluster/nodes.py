"""Multi-node harness for the cluster tests (issue 20): three ``sipserver run`` processes sharing
one real redis-server, and SIP phones on raw sockets, each registered to one node (its edge).

Invariants:
- Every node is a separate process (``sys.executable -m sipserver run -c node.toml``) on its own
  free loopback ports (UDP, TCP, WS, management), with ``store.backend = "redis"``, the shared
  ``outbound.secret`` and ``[cluster] node_id``; heartbeats are scaled down (interval 0.2 s,
  TTL 0.8 s) so node death is noticed in test time.
- ``Cluster.start`` starts all nodes at once and returns when each answers ``GET /info`` on its
  management port; ``Cluster.stop`` SIGKILLs whatever is still running (nothing of a node
  outlives its test or module).
- The phones (``Phone``) wrap the raw UAs of tests/integration/harness.py: they send the bytes
  the test builds and hand back what arrives. The only thing they do on their own is answer a
  server keepalive OPTIONS (nat.keepalive) with 200, so it never stands in for the request a
  test waits for.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import redis as redis_client
import trio
from harness import UA, TcpUA, UdpUA, branch, register, response_to
from redis_fixture import RedisServer

from sipserver.mgmt.ctl import CtlError, MgmtClient
from sipserver.sip import Request, Response

DOMAIN = "example.test"
HEARTBEAT_INTERVAL = 0.2
HEARTBEAT_TTL = 0.8
START_TIMEOUT = 20.0
REPO = Path(__file__).resolve().parents[2]

_rng = random.Random()
_taken: set[int] = set()


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1, never handed out twice in this run.

    Drawn below Linux's ephemeral range (32768-60999) so that no outgoing connection of the run
    (phones, node-to-node hops) can be sitting on it (tests/interop/serverproc.py does the same)."""
    for _ in range(500):
        port = _rng.randrange(20000, 32000)
        if port in _taken:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", port))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        _taken.add(port)
        return port
    raise RuntimeError("no free port")


def tail(path: Path, chars: int = 6000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"({path}: {exc})"
    return text[-chars:] if len(text) > chars else text


class Node:
    """One ``sipserver run`` process, a node of the cluster."""

    def __init__(self, node_id: str, directory: Path, redis_url: str, prefix: str, secret: str, *,
                 heartbeat_interval: float = HEARTBEAT_INTERVAL, heartbeat_ttl: float = HEARTBEAT_TTL,
                 extra_toml: str = "") -> None:
        self.node_id = node_id
        self.dir = directory
        self.udp_port, self.tcp_port, self.ws_port, self.mgmt_port = (free_port() for _ in range(4))
        self.config_path = directory / "node.toml"
        self.log_path = directory / "node.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.config_path.write_text(
            f"""\
[server]
listen = ["udp:127.0.0.1:{self.udp_port}", "tcp:127.0.0.1:{self.tcp_port}", "ws:127.0.0.1:{self.ws_port}"]
domains = ["{DOMAIN}"]
data_dir = "{directory / 'data'}"
log_level = "debug"

[store]
backend = "redis"
redis_url = "{redis_url}"
redis_key_prefix = "{prefix}"

[outbound]
secret = "{secret}"

[cluster]
node_id = "{node_id}"
heartbeat_interval = {heartbeat_interval}
heartbeat_ttl = {heartbeat_ttl}

[mgmt]
listen = "127.0.0.1:{self.mgmt_port}"

[rate_limit]
enabled = false

# Overload control off: on a shared 2-core test host three nodes, Redis with appendfsync always
# and the test itself can hold a group commit past 0.2 s, and a 503 (overload) there would only
# stand in for what these tests look at. Overload control has its own tests.
[limits]
overload_queue_delay = 0
{extra_toml}"""
        )

    # -------------------------------------------------------------- addresses
    @property
    def udp(self) -> tuple[str, int]:
        return ("127.0.0.1", self.udp_port)

    @property
    def tcp(self) -> tuple[str, int]:
        return ("127.0.0.1", self.tcp_port)

    @property
    def ws(self) -> tuple[str, int]:
        return ("127.0.0.1", self.ws_port)

    def addr(self, transport: str) -> tuple[str, int]:
        return {"udp": self.udp, "tcp": self.tcp, "ws": self.ws}[transport]

    # -------------------------------------------------------------- process
    def spawn(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sipserver", "run", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.dir),
                env=env,
                # Its own process group: a SIGKILL of the node also takes its store-writer child,
                # as a machine dying would.
                start_new_session=True,
            )

    def ready(self) -> bool:
        try:
            self.mgmt().json("GET", "/info")
        except CtlError:
            return False
        return True

    def wait_ready(self) -> None:
        """Block until the node answers its management API (fails with its log if it exits)."""
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready():
            if not self.running():
                raise RuntimeError(f"node {self.node_id} exited during start-up\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.node_id} not ready after {START_TIMEOUT} s\n{self.log_tail()}")
            time.sleep(0.05)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the node's whole process group (the server and its store-writer child)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    # -------------------------------------------------------------- management API
    def mgmt(self, timeout: float = 2.0) -> MgmtClient:
        return MgmtClient("127.0.0.1", self.mgmt_port, timeout=timeout)

    def registrations(self, aor: str | None = None) -> list[dict[str, Any]]:
        """The bindings this node's view holds (``GET /registrations``), of one AoR if given."""
        query = {"aor": aor} if aor else None
        data = self.mgmt().json("GET", "/registrations", query=query)
        return list(data["registrations"])

    def log_tail(self, chars: int = 6000) -> str:
        state = "running" if self.running() else f"exited {self.process.returncode if self.process else '-'}"
        return f"--- node {self.node_id} ({state}) {self.log_path} ---\n{tail(self.log_path, chars)}"


@attrs.define
class Cluster:
    """Three nodes (a, b, c) on one Redis, sharing a key prefix and a flow-token key."""

    redis: RedisServer
    directory: Path
    prefix: str = attrs.field(factory=lambda: f"t{secrets.token_hex(4)}:")
    secret: str = attrs.field(factory=lambda: secrets.token_hex(16))
    nodes: dict[str, Node] = attrs.field(factory=dict)

    def __getitem__(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def start(self, ids: tuple[str, ...] = ("a", "b", "c")) -> None:
        for node_id in ids:
            d = self.directory / f"node-{node_id}"
            d.mkdir(parents=True, exist_ok=True)
            self.nodes[node_id] = Node(node_id, d, self.redis.url, self.prefix, self.secret)
        for node in self.nodes.values():
            node.spawn()
        deadline = time.monotonic() + START_TIMEOUT
        waiting = list(self.nodes.values())
        while waiting:
            for node in list(waiting):
                if not node.running():
                    self.stop()
                    raise RuntimeError(f"node {node.node_id} exited during start-up\n{self.logs()}")
                if node.ready():
                    waiting.remove(node)
            if not waiting:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"nodes {[n.node_id for n in waiting]} not ready after {START_TIMEOUT} s\n{self.logs()}"
                )
            time.sleep(0.05)
        self.wait_peers()

    def wait_peers(self, timeout: float = 3.0) -> bool:
        """Wait until every running node sees every other running node alive (``GET /cluster``),
        as a deployment would before taking calls: a node learns its peers from their heartbeat
        keys, polled every heartbeat interval, so for the first interval after start-up it does
        not know where the others are. Falls back to the heartbeat keys in Redis when a node has
        no ``/cluster``. Returns False on timeout, without failing: the tests then show what
        the servers do on the wire."""
        running = [n for n in self.nodes.values() if n.running()]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._sees_peers(n, running) for n in running):
                return True
            time.sleep(0.02)
        return False

    def _sees_peers(self, node: Node, running: list[Node]) -> bool:
        want = {n.node_id for n in running} - {node.node_id}
        try:
            status = node.mgmt().json("GET", "/cluster")
        except CtlError:
            return all(self.heartbeat(n) is not None for n in want)
        alive = {n["node"] for n in status.get("nodes", []) if n.get("alive") and not n.get("self")}
        return want <= alive

    def stop(self) -> None:
        for node in self.nodes.values():
            node.kill()

    def logs(self, chars: int = 6000) -> str:
        return "\n".join(node.log_tail(chars) for node in self.nodes.values())

    # -------------------------------------------------------------- Redis views
    def client(self) -> redis_client.Redis:
        return self.redis.client()

    def heartbeat(self, node_id: str) -> dict[str, Any] | None:
        try:
            raw = self.client().get(f"{self.prefix}node:{node_id}")
        except redis_client.RedisError:
            return None
        return json.loads(raw) if raw else None

    def binding_keys(self, aor: str | None = None) -> list[str]:
        """The ``<prefix>binding:*`` keys in Redis, of one AoR (``user@domain``) if given."""
        keys = sorted(self.client().scan_iter(match=f"{self.prefix}binding:*", count=1000))
        if aor is None:
            return keys
        return [k for k in keys if _key_aor(k[len(self.prefix) + len("binding:") :]) == aor]


def _key_aor(binding_key: str) -> str | None:
    """The AoR of a binding key (``["alice@example.test","instance",...]``, docs/redis.md)."""
    try:
        parts = json.loads(binding_key)
    except ValueError:
        return None
    return parts[0] if isinstance(parts, list) and parts else None


@contextmanager
def node_pair(redis: RedisServer, directory: Path, **node_kwargs: Any) -> Iterator[tuple[Node, Node]]:
    """Nodes a and b of a fresh cluster (own key prefix and key), a started and ready before b
    is spawned; both killed afterwards. ``node_kwargs`` go to both ``Node``s."""
    if redis.process is None:
        redis.start()
    prefix, secret = f"t{secrets.token_hex(4)}:", secrets.token_hex(16)
    nodes: list[Node] = []
    try:
        for node_id in ("a", "b"):
            d = directory / f"node-{node_id}"
            d.mkdir()
            node = Node(node_id, d, redis.url, prefix, secret, **node_kwargs)
            nodes.append(node)
            node.spawn()
            node.wait_ready()
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.kill()


# ------------------------------------------------------------------ phones


class Phone:
    """A SIP phone: one UA (one connection or UDP socket) to one node, its edge."""

    def __init__(self, ua: UA, user: str, node: Node) -> None:
        self.ua = ua
        self.user = user
        self.node = node
        self.instance: str | None = None

    @property
    def aor(self) -> str:
        return f"{self.user}@{DOMAIN}"

    @property
    def uri(self) -> str:
        return f"sip:{self.aor}"

    def contact(self) -> str:
        t = self.ua.transport
        tparam = "" if t == "udp" else f";transport={t}"
        return f"<sip:{self.user}@{self.ua.hostport()}{tparam}>"

    async def send(self, data: str | bytes) -> None:
        await self.ua.send(data)

    async def recv(self, timeout: float = 3.0) -> Request | Response:
        """The next message, after answering any keepalive OPTIONS from the server."""
        while True:
            msg = await self.ua.recv(timeout)
            if isinstance(msg, Request) and msg.method == "OPTIONS":
                await self.send(response_to(msg, 200))
                continue
            return msg

    def describe(self) -> str:
        return f"{self.user} ({self.ua.transport} to node {self.node.node_id})"

    def _timed_out(self, what: str, timeout: float, start: int) -> AssertionError:
        got = [m.split(b"\r\n", 1)[0].decode(errors="replace") for m in self.ua.received[start:]]
        got = [g for g in got if g.strip()]
        return AssertionError(f"{self.describe()}: no {what} within {timeout} s (received meanwhile: {got or 'nothing'})")

    async def recv_request(self, method: str | None = None, timeout: float = 3.0) -> Request:
        start = len(self.ua.received)
        try:
            with trio.fail_after(timeout):
                while True:
                    msg = await self.recv(timeout)
                    if isinstance(msg, Request) and (method is None or msg.method == method):
                        return msg
        except trio.TooSlowError:
            raise self._timed_out(method or "request", timeout, start) from None

    async def recv_response(self, timeout: float = 3.0, *, final: bool = True, call_id: str | None = None) -> Response:
        start = len(self.ua.received)
        try:
            with trio.fail_after(timeout):
                while True:
                    msg = await self.recv(timeout)
                    if not isinstance(msg, Response):
                        continue
                    if call_id is not None and msg.call_id != call_id:
                        continue
                    if final and msg.status < 200:
                        continue
                    return msg
        except trio.TooSlowError:
            what = ("final response" if final else "response") + (f" to {call_id}" if call_id else "")
            raise self._timed_out(what, timeout, start) from None

    async def register(
        self,
        *,
        outbound: bool = True,
        instance: str | None = None,
        reg_id: int | None = 1,
        expires: int = 600,
        expect: int | None = 200,
        timeout: float = 3.0,
    ) -> Response:
        """REGISTER to the edge node: outbound (``+sip.instance``, ``reg-id``, ``;ob``,
        ``Supported: outbound``) or a plain binding of the contact. Returns the final answer,
        asserting its status when ``expect`` is given."""
        if outbound:
            self.instance = instance or self.instance or f"urn:uuid:{_uuid()}"
            text = register(self.ua, self.user, domain=DOMAIN, instance=self.instance, reg_id=reg_id, expires=expires)
        else:
            text = register(self.ua, self.user, domain=DOMAIN, contact=self.contact(), expires=expires, supported=None)
        await self.send(text)
        resp = await self.recv_response(timeout)
        if expect is not None:
            assert resp.status == expect, (
                f"REGISTER {self.aor} via {self.ua.transport} to node {self.node.node_id}: "
                f"{resp.status} {resp.reason}, expected {expect}"
            )
        return resp

    async def close(self) -> None:
        await self.ua.close()


def _uuid() -> str:
    h = secrets.token_hex(16)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


async def udp_phone(user: str, node: Node) -> Phone:
    return Phone(await UdpUA.open(node.udp), user, node)


async def tcp_phone(user: str, node: Node) -> Phone:
    return Phone(await TcpUA.open(node.tcp), user, node)


# ------------------------------------------------------------------ dialogs


@attrs.define
class Dialog:
    """One established call between two phones, as each side sees it."""

    call_id: str
    caller: Phone
    callee: Phone
    caller_tag: str
    callee_tag: str
    caller_contact: str  # the caller's Contact URI (the callee's remote target)
    callee_contact: str  # the callee's Contact URI (the caller's remote target)
    caller_routes: list[str]  # the caller's route set: the 200's Record-Route, reversed
    callee_routes: list[str]  # the callee's route set: the INVITE's Record-Route, in order
    callee_uri: str  # the callee's AoR URI (the To of the INVITE)
    caller_cseq: int = 1
    callee_cseq: int = 0


def _uri_of(header_value: str) -> str:
    v = header_value.strip()
    if "<" in v:
        return v[v.index("<") + 1 : v.index(">")]
    return v.split(";", 1)[0]


def in_dialog(sender: Phone, method: str, ruri: str, *, call_id: str, from_tag: str, to_tag: str,
              from_uri: str, to_uri: str, cseq: int, routes: list[str], contact: str | None = None,
              via_branch: str | None = None) -> str:
    ua = sender.ua
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{ua.via_transport} {ua.hostport()};branch={via_branch or branch()};rport",
        "Max-Forwards: 70",
        f"From: <{from_uri}>;tag={from_tag}",
        f"To: <{to_uri}>;tag={to_tag}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
    ]
    lines += [f"Route: {r}" for r in routes]
    if contact:
        lines.append(f"Contact: {contact}")
    lines.append("Content-Length: 0")
    return "\r\n".join(lines) + "\r\n\r\n"


SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def invite(caller: Phone, callee_uri: str, *, call_id: str, from_tag: str) -> str:
    ua = caller.ua
    lines = [
        f"INVITE {callee_uri} SIP/2.0",
        f"Via: SIP/2.0/{ua.via_transport} {ua.hostport()};branch={branch()};rport",
        "Max-Forwards: 70",
        f"From: <{caller.uri}>;tag={from_tag}",
        f"To: <{callee_uri}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        f"Contact: {caller.contact()}",
        "Content-Type: application/sdp",
        f"Content-Length: {len(SDP)}",
    ]
    return "\r\n".join(lines) + "\r\n\r\n" + SDP


async def call(caller: Phone, callee: Phone, *, callee_ua: Phone | None = None, timeout: float = 3.0,
               on_invite: Callable[[Request], None] | None = None) -> Dialog:
    """INVITE from ``caller`` (to its edge) for ``callee``'s AoR; the callee (on ``callee_ua`` if
    the phone has several connections) answers 180 then 200; the caller gets both and sends ACK,
    which must reach the callee. Returns the dialog."""
    answering = callee_ua or callee
    call_id = f"call-{secrets.token_hex(6)}"
    from_tag = secrets.token_hex(4)
    to_tag = secrets.token_hex(4)
    await caller.send(invite(caller, callee.uri, call_id=call_id, from_tag=from_tag))
    try:
        inv = await answering.recv_request("INVITE", timeout)
    except AssertionError as exc:
        raise AssertionError(f"INVITE from {caller.describe()}: {exc}; {await _caller_got(caller, call_id)}") from None
    assert inv.call_id == call_id, f"callee got another INVITE: {inv.call_id}"
    if on_invite:
        on_invite(inv)
    callee_contact = f"<sip:{callee.user}@{answering.ua.hostport()}" + (
        "" if answering.ua.transport == "udp" else f";transport={answering.ua.transport}"
    ) + ">"
    await answering.send(response_to(inv, 180, "Ringing", to_tag=to_tag, contact=callee_contact))
    ringing = await caller.recv_response(timeout, final=False, call_id=call_id)
    while ringing.status == 100:
        ringing = await caller.recv_response(timeout, final=False, call_id=call_id)
    assert ringing.status == 180, f"caller got {ringing.status} {ringing.reason}, expected 180"
    await answering.send(response_to(inv, 200, "OK", to_tag=to_tag, contact=callee_contact, body=SDP,
                                     extra=["Content-Type: application/sdp"]))
    ok = await caller.recv_response(timeout, call_id=call_id)
    assert ok.status == 200, f"caller got {ok.status} {ok.reason}, expected 200"
    caller_routes = list(reversed([v.strip() for v in ok.header_values("record-route")]))
    callee_routes = [v.strip() for v in inv.header_values("record-route")]
    dialog = Dialog(
        call_id=call_id,
        caller=caller,
        callee=answering,
        caller_tag=from_tag,
        callee_tag=to_tag,
        caller_contact=_uri_of(inv.header("contact") or ""),
        callee_contact=_uri_of(ok.header("contact") or ""),
        caller_routes=caller_routes,
        callee_routes=callee_routes,
        callee_uri=callee.uri,
    )
    await caller.send(in_dialog(caller, "ACK", dialog.callee_contact, call_id=call_id, from_tag=from_tag,
                                to_tag=to_tag, from_uri=caller.uri, to_uri=callee.uri, cseq=1,
                                routes=caller_routes))
    ack = await answering.recv_request("ACK", timeout)
    assert ack.call_id == call_id
    return dialog


async def _caller_got(caller: Phone, call_id: str) -> str:
    """What the caller got back meanwhile (for a failure message)."""
    try:
        resp = await caller.recv_response(0.3, final=False, call_id=call_id)
    except AssertionError:
        return "the caller got no response"
    got = [f"{resp.status} {resp.reason}"]
    while resp.status < 200:
        try:
            resp = await caller.recv_response(0.3, final=False, call_id=call_id)
        except AssertionError:
            break
        got.append(f"{resp.status} {resp.reason}")
    return f"the caller got {', '.join(got)}"


async def caller_hangs_up(d: Dialog, timeout: float = 3.0) -> None:
    """BYE from the caller reaches the callee; its 200 reaches the caller."""
    d.caller_cseq += 1
    await d.caller.send(in_dialog(d.caller, "BYE", d.callee_contact, call_id=d.call_id, from_tag=d.caller_tag,
                                  to_tag=d.callee_tag, from_uri=d.caller.uri,
                                  to_uri=d.callee_uri, cseq=d.caller_cseq,
                                  routes=d.caller_routes))
    bye = await d.callee.recv_request("BYE", timeout)
    assert bye.call_id == d.call_id
    await d.callee.send(response_to(bye, 200))
    ok = await d.caller.recv_response(timeout, call_id=d.call_id)
    assert (ok.status, ok.cseq.method) == (200, "BYE"), f"caller got {ok.status} {ok.reason} to its BYE"


async def callee_hangs_up(d: Dialog, timeout: float = 3.0) -> None:
    """BYE from the callee reaches the caller; its 200 reaches the callee."""
    d.callee_cseq += 1
    await d.callee.send(in_dialog(d.callee, "BYE", d.caller_contact, call_id=d.call_id, from_tag=d.callee_tag,
                                  to_tag=d.caller_tag, from_uri=d.callee_uri,
                                  to_uri=d.caller.uri, cseq=d.callee_cseq, routes=d.callee_routes))
    bye = await d.caller.recv_request("BYE", timeout)
    assert bye.call_id == d.call_id
    await d.caller.send(response_to(bye, 200))
    ok = await d.callee.recv_response(timeout, call_id=d.call_id)
    assert (ok.status, ok.cseq.method) == (200, "BYE"), f"callee got {ok.status} {ok.reason} to its BYE"


def message(sender: Phone, to_uri: str, text: str = "hello") -> tuple[str, str]:
    """A MESSAGE request (wire text) and its Call-ID."""
    call_id = f"msg-{secrets.token_hex(6)}"
    ua = sender.ua
    lines = [
        f"MESSAGE {to_uri} SIP/2.0",
        f"Via: SIP/2.0/{ua.via_transport} {ua.hostport()};branch={branch()};rport",
        "Max-Forwards: 70",
        f"From: <{sender.uri}>;tag={secrets.token_hex(4)}",
        f"To: <{to_uri}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 MESSAGE",
        "Content-Type: text/plain",
        f"Content-Length: {len(text.encode())}",
    ]
    return "\r\n".join(lines) + "\r\n\r\n" + text, call_id
