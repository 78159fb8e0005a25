"""The attacker's kit for tests/security: a victim that must hear nothing, peers that answer,
digest credentials, and SIP requests written out as exact wire text.

Addresses (all on loopback; Linux routes the whole of 127.0.0.0/8 to ``lo``):
- the server listens on 127.0.0.1 (ephemeral ports) and serves ``example.com``;
- ``RELAY_HOST`` 127.0.0.2 is a relay domain (``proxy.relay_domains``): a trunk we control;
- ``VICTIM_HOST`` 127.0.0.3 is somebody else: neither served nor a relay domain. A ``Victim``
  there (a UDP socket and a TCP listener) must receive no byte and no connection, ever.
- ``OWN_HOST`` 127.0.0.1 is the server's own address: a victim there sits on the server's host
  (another port: a database, a management API). The registered phones (bob, carol) live there too.
- ``ATTACKER_HOST`` 127.0.0.4 is where the attacker sends from: a stranger with no account.

``Scene`` starts the attacked server with bob and carol registered (authenticated REGISTERs),
the trunk listening, and the attacker's socket; ``Scene.ask`` sends one request and returns the
final answer (ACKing a non-2xx final answer to an INVITE, as a UA must).
"""

from __future__ import annotations

import re
import secrets
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
from harness import UdpUA, response_to, running_server

from sipserver.auth.digest import compute_response, ha1
from sipserver.sip import Request, Response, parse_message

REALM = "example.com"
DOMAIN = "example.com"
PASSWORDS = {"alice": "wonderland", "bob": "builder", "carol": "singer"}
USERS = {name: {"password": pw} for name, pw in PASSWORDS.items()}
OWN_HOST = "127.0.0.1"
RELAY_HOST = "127.0.0.2"
VICTIM_HOST = "127.0.0.3"
ATTACKER_HOST = "127.0.0.4"
FOREIGN = "foreign.example"  # a From domain that is neither served nor a relay domain
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.9\r\ns=-\r\nc=IN IP4 127.0.0.9\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"


def sections(**overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The configuration of issue 16's attacked server: [users], auth.realm and relay domains
    (``itsp.example`` as in the issue, and our trunk's literal address)."""
    data: dict[str, dict[str, Any]] = {
        "users": dict(USERS),
        "auth": {"realm": REALM},
        "proxy": {"relay_domains": ["itsp.example", RELAY_HOST]},
    }
    for name, values in overrides.items():
        data.setdefault(name, {}).update(values)
    return data


def server_udp(server: Any) -> tuple[str, int]:
    return next((bl.host, bl.port) for bl in server.listeners if bl.transport == "udp")


def server_tcp(server: Any) -> tuple[str, int]:
    return next((bl.host, bl.port) for bl in server.listeners if bl.transport == "tcp")


# --------------------------------------------------------------------------- the victim
class Victim:
    """A UDP socket and a TCP listener on ``host`` that nobody should ever reach through the
    server. ``heard`` drains what arrived; ``assert_silent`` waits and checks nothing did."""

    def __init__(self, host: str = VICTIM_HOST) -> None:
        self.host = host
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((host, 0))
        self.udp.setblocking(False)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind((host, 0))
        self.tcp.listen(64)
        self.tcp.setblocking(False)
        self.udp_port = self.udp.getsockname()[1]
        self.tcp_port = self.tcp.getsockname()[1]
        self._conns: list[socket.socket] = []

    @property
    def udp_hostport(self) -> str:
        return f"{self.host}:{self.udp_port}"

    @property
    def tcp_hostport(self) -> str:
        return f"{self.host}:{self.tcp_port}"

    def uri(self, user: str | None = "x", *, tcp: bool = False, params: str = "") -> str:
        """``sip:x@VICTIM:port`` (UDP port), or the TCP listener's with ``;transport=tcp``."""
        userinfo = f"{user}@" if user else ""
        if tcp:
            return f"sip:{userinfo}{self.tcp_hostport};transport=tcp{params}"
        return f"sip:{userinfo}{self.udp_hostport}{params}"

    def heard(self) -> list[str]:
        """Everything that reached the victim so far: datagrams, accepted connections and the
        bytes they carried."""
        got: list[str] = []
        while True:
            try:
                data, src = self.udp.recvfrom(65536)
            except BlockingIOError:
                break
            got.append(f"UDP datagram from {src}: {data[:300]!r}")
        while True:
            try:
                conn, src = self.tcp.accept()
            except BlockingIOError:
                break
            conn.setblocking(False)
            self._conns.append(conn)
            got.append(f"TCP connection from {src}")
        for conn in self._conns:
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                continue
            if data:
                got.append(f"TCP bytes from {conn.getpeername()}: {data[:300]!r}")
        return got

    async def assert_silent(self, wait: float = 0.5) -> None:
        await trio.sleep(wait)
        got = self.heard()
        assert not got, f"the victim at {self.host} heard: {got}"

    def close(self) -> None:
        for s in (self.udp, self.tcp, *self._conns):
            s.close()


# --------------------------------------------------------------------------- peers
@attrs.define(eq=False)
class Peer:
    """A UDP UA that answers every request it hears (INVITE: 180 then 486, ACK: nothing,
    others: 200) and keeps them: a registered callee, or the trunk of a relay domain."""

    sock: Any  # trio socket
    heard: list[Request] = attrs.field(factory=list)
    responses: list[Response] = attrs.field(factory=list)

    @classmethod
    async def open(cls, host: str = OWN_HOST) -> Peer:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind((host, 0))
        return cls(sock)

    @property
    def hostport(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            data, src = await self.sock.recvfrom(65536)
            if not data.strip(b"\r\n"):
                continue
            msg = parse_message(data)
            if isinstance(msg, Response):
                self.responses.append(msg)
                continue
            assert isinstance(msg, Request)
            self.heard.append(msg)
            if msg.method == "ACK":
                continue
            if msg.method == "INVITE":
                await self.sock.sendto(response_to(msg, 180, "Ringing", to_tag="peer").encode(), src)
                await self.sock.sendto(response_to(msg, 486, "Busy Here", to_tag="peer").encode(), src)
            else:
                await self.sock.sendto(response_to(msg, 200, "OK", to_tag="peer").encode(), src)

    def calls(self) -> set[tuple[str, str]]:
        """(method, Call-ID) of every request heard."""
        return {(r.method, r.call_id) for r in self.heard}

    def heard_call(self, call_id: str, method: str | None = None) -> list[Request]:
        return [r for r in self.heard if r.call_id == call_id and (method is None or r.method == method)]


# --------------------------------------------------------------------------- digest
@attrs.define
class Digest:
    """Credentials built on one challenge's nonce; ``nc`` counts up with each use (RFC 7616)."""

    realm: str
    nonce: str
    opaque: str
    algorithm: str
    nc: int = 0

    @classmethod
    def from_challenge(cls, resp: Response) -> Digest:
        name = "www-authenticate" if resp.status == 401 else "proxy-authenticate"
        text = resp.header_lines(name)[0]
        p = {k.lower(): v for k, v in re.findall(r'(\w+)="?([^",]+)"?', text.split(" ", 1)[1])}
        return cls(p["realm"], p["nonce"], p.get("opaque", ""), p.get("algorithm", "MD5"))

    def value(self, user: str, method: str, uri: str) -> str:
        self.nc += 1
        nc = f"{self.nc:08x}"
        cnonce = secrets.token_hex(4)
        h1 = ha1(user, self.realm, PASSWORDS[user], self.algorithm)
        response = compute_response(self.algorithm, h1, self.nonce, nc, cnonce, "auth", method, uri)
        return (
            f'Digest username="{user}", realm="{self.realm}", nonce="{self.nonce}", uri="{uri}", '
            f'response="{response}", algorithm={self.algorithm}, cnonce="{cnonce}", qop=auth, '
            f'nc={nc}, opaque="{self.opaque}"'
        )


# --------------------------------------------------------------------------- wire text
def branch(mark: str = "") -> str:
    return f"z9hG4bK{mark}{secrets.token_hex(6)}"


def sip(
    method: str,
    ruri: str,
    *,
    via: str,
    transport: str = "UDP",
    from_uri: str,
    to_uri: str | None = None,
    to_tag: str | None = None,
    from_tag: str | None = None,
    call_id: str | None = None,
    cseq: int = 1,
    routes: Sequence[str] = (),
    extra: Iterable[str] = (),
    body: str = "",
    content_type: str = "application/sdp",
    via_branch: str | None = None,
    max_forwards: int = 70,
    contact: str | None = None,
) -> str:
    """One request as exact wire text (``routes``: one Route line each)."""
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {via};branch={via_branch or branch()};rport",
        f"Max-Forwards: {max_forwards}",
        f"From: <{from_uri}>;tag={from_tag or secrets.token_hex(4)}",
        f"To: <{to_uri or ruri}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id or secrets.token_hex(8)}",
        f"CSeq: {cseq} {method}",
    ]
    lines += [f"Route: {r}" for r in routes]
    if contact:
        lines.append(f"Contact: {contact}")
    lines += list(extra)
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


def ack_for(sent: str, resp: Response) -> str:
    """RFC 3261 §17.1.1.3: the ACK for a non-2xx final response to the INVITE ``sent``."""
    inv = parse_message(sent.encode())
    assert isinstance(inv, Request)
    lines = [
        f"ACK {inv.uri_text} SIP/2.0",
        f"Via: {inv.header_lines('via')[0]}",
        "Max-Forwards: 70",
        f"From: {inv.header('from')}",
        f"To: {resp.header('to')}",
        f"Call-ID: {inv.call_id}",
        f"CSeq: {inv.cseq.seq} ACK",
    ]
    lines += [f"Route: {r}" for r in inv.header_lines("route")]
    lines.append("Content-Length: 0")
    return "\r\n".join(lines) + "\r\n\r\n"


def uri_of(route_value: str) -> str:
    """The URI inside ``<...>`` of a Route/Record-Route value."""
    m = re.search(r"<([^>]*)>", route_value)
    assert m, route_value
    return m.group(1)


def without_param(uri: str, name: str) -> str:
    return re.sub(rf";{name}(=[^;>]*)?", "", uri)


def first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


async def final_response(ua: Any, call_id: str, timeout: float = 3.0) -> Response:
    """The next final response for ``call_id`` (provisionals and others' responses skipped)."""
    with trio.fail_after(timeout):
        while True:
            msg = await ua.recv(timeout)
            if isinstance(msg, Response) and msg.status >= 200 and msg.call_id == call_id:
                return msg


async def register_user(ua: Any, user: str, *, expires: int = 3600, contact_host: str | None = None,
                        extra: Sequence[str] = ()) -> Response:
    """An authenticated REGISTER of ``ua`` for ``user`` (401, then credentials): the final
    response to the second attempt."""
    call_id = f"reg-{user}-{secrets.token_hex(4)}"
    host = contact_host or ua.hostport()
    tparam = "" if ua.transport == "udp" else f";transport={ua.transport}"

    def text(cseq: int, more: Sequence[str]) -> str:
        lines = [
            f"REGISTER sip:{DOMAIN} SIP/2.0",
            f"Via: SIP/2.0/{ua.via_transport} {ua.hostport()};branch={branch()};rport",
            "Max-Forwards: 70",
            f"From: <sip:{user}@{DOMAIN}>;tag={secrets.token_hex(4)}",
            f"To: <sip:{user}@{DOMAIN}>",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} REGISTER",
            f"Contact: <sip:{user}@{host}{tparam}>",
            f"Expires: {expires}",
            *extra,
            *more,
            "Content-Length: 0",
        ]
        return "\r\n".join(lines) + "\r\n\r\n"

    await ua.send(text(1, ()))
    challenge = await final_response(ua, call_id)
    assert challenge.status == 401, f"{challenge.status} {challenge.reason}"
    auth = Digest.from_challenge(challenge).value(user, "REGISTER", f"sip:{DOMAIN}")
    await ua.send(text(2, (f"Authorization: {auth}",)))
    return await final_response(ua, call_id)


# --------------------------------------------------------------------------- the scene
async def exchange(ua: Any, text: str, timeout: float = 2.0) -> list[Response]:
    """Send one request; collect its responses (matched by Call-ID and CSeq method) up to the
    final one, or until ``timeout`` passes. A non-2xx final answer to an INVITE is ACKed."""
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    await ua.send(text)
    got: list[Response] = []
    with trio.move_on_after(timeout):
        while True:
            data = await ua.recv_raw(timeout)
            if not data.strip(b"\r\n"):
                continue
            resp = parse_message(data)
            if isinstance(resp, Response) and resp.call_id == msg.call_id and resp.cseq.method == msg.method:
                got.append(resp)
                if resp.status >= 200:
                    break
    if msg.method == "INVITE" and got and got[-1].status >= 300:
        await ua.send(ack_for(text, got[-1]))
    return got


@attrs.define(eq=False)
class Scene:
    """The attacked server (issue 16's configuration) with bob and carol registered from
    127.0.0.1 (Peers answering everything), the trunk of relay domain ``RELAY_HOST`` and the
    attacker's UDP socket on ``ATTACKER_HOST``. ``digest`` holds a nonce of the server's, for
    the credentials of the tests that authenticate."""

    server: Any
    bob: Peer
    carol: Peer
    relay: Peer
    attacker: Any  # harness.UdpUA
    digest: Digest

    @property
    def udp(self) -> tuple[str, int]:
        return server_udp(self.server)

    @property
    def server_hostport(self) -> str:
        host, port = self.udp
        return f"{host}:{port}"

    def creds(self, user: str, method: str, uri: str, header: str = "Proxy-Authorization") -> str:
        return f"{header}: {self.digest.value(user, method, uri)}"

    async def ask(self, text: str, ua: Any = None, timeout: float = 2.0) -> Response | None:
        """The final response to ``text`` (from the attacker unless ``ua``), None if none came."""
        got = await exchange(ua or self.attacker, text, timeout)
        return got[-1] if got and got[-1].status >= 200 else None

    async def ua(self, host: str = ATTACKER_HOST) -> Any:
        return await UdpUA.open(self.udp, local_host=host)

    def token_owner(self, rr_value: str) -> tuple[str, int]:
        """Test-side knowledge: the remote address of the flow a Record-Route token of ours names."""
        user = uri_of(rr_value).split("@", 1)[0].removeprefix("sip:")
        return self.server.codec.decode(user).remote  # type: ignore[no-any-return]

    async def call(self, ua: Any, callee: Peer, to_user: str, *, from_uri: str, call_id: str,
                   from_tag: str, extra: Sequence[str] = (), ruri: str | None = None) -> tuple[list[Response], Request]:
        """``ua`` INVITEs ``to_user``; returns the responses it got (180 carrying the
        Record-Routes, then the callee's 486) and the INVITE as the callee saw it."""
        ruri = ruri or f"sip:{to_user}@{DOMAIN}"
        text = sip("INVITE", ruri, via=ua.hostport(), from_uri=from_uri, from_tag=from_tag, call_id=call_id,
                   body=SDP, contact=f"<sip:caller@{ua.hostport()}>", extra=extra)
        got = await exchange(ua, text)
        seen = callee.heard_call(call_id, "INVITE")
        assert seen, f"the callee never got the INVITE; responses: {[(r.status, r.reason) for r in got]}"
        return got, seen[0]


async def registered_peer(server: Any, user: str) -> Peer:
    ua = await UdpUA.open(server_udp(server), local_host=OWN_HOST)
    resp = await register_user(ua, user)
    assert resp.status == 200, f"{resp.status} {resp.reason}"
    return Peer(ua.sock)


@asynccontextmanager
async def scene(tmp_path: Path, **overrides: dict[str, Any]) -> AsyncIterator[Scene]:
    async with running_server(tmp_path, **sections(**overrides)) as server:
        async with trio.open_nursery() as nursery:
            try:
                bob = await registered_peer(server, "bob")
                carol = await registered_peer(server, "carol")
                relay = await Peer.open(RELAY_HOST)
                for peer in (bob, carol, relay):
                    await nursery.start(peer.serve)
                attacker = await UdpUA.open(server_udp(server), local_host=ATTACKER_HOST)
                # a nonce, as any client gets one: a request claiming a local user is challenged
                probe = sip("OPTIONS", f"sip:bob@{DOMAIN}", via=attacker.hostport(), from_uri=f"sip:alice@{DOMAIN}")
                got = await exchange(attacker, probe)
                assert got and got[-1].status == 407, [(r.status, r.reason) for r in got]
                yield Scene(server, bob, carol, relay, attacker, Digest.from_challenge(got[-1]))
            finally:
                nursery.cancel_scope.cancel()
