"""baresip (libre) against the installed server: RFC 5626 outbound registration, calls routed over
the registered flows, STUN keep-alive over UDP, and digest authentication.

Each baresip runs in its own config directory with null audio (the `aubridge` module: no sound
device) and is driven over `ctrl_tcp` (netstring-framed JSON: commands in, responses and events
out). Accounts are created with the `uanew` command after the control socket is connected, so the
test sees every REGISTER_OK / REGISTER_FAIL event. `-s` makes baresip print a SIP trace on stdout
(`TCP src -> dst` then the message); stdout is block-buffered into a file, so the trace is read
only after the process has exited.
"""

from __future__ import annotations

import json
import re
import select
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serverproc import ServerProcess, free_port, in_ci, require_tool

pytestmark = pytest.mark.interop

DOMAIN = "example.com"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
STUN_COOKIE = 0x2112A442

# Only what a headless UA needs: G.711, the aubridge null audio device (player and source are
# bridged inside the process), the UUID that gives +sip.instance, the account loader, the menu
# commands (dial/accept/hangup/reginfo/uanew/quit) and the JSON control socket.
CONFIG = """\
poll_method             epoll
sip_listen              127.0.0.1:{sip_port}
net_interface           127.0.0.1
call_local_timeout      30
call_max_calls          4
audio_player            aubridge,null
audio_source            aubridge,null
audio_alert             aubridge,null
module_path             {module_path}
module                  g711.so
module                  aubridge.so
module_tmp              uuid.so
module_tmp              account.so
module_app              menu.so
module_app              ctrl_tcp.so
ctrl_tcp_listen         127.0.0.1:{ctrl_port}
"""

MODULE_DIRS = (Path("/usr/lib/baresip/modules"), Path("/usr/lib/x86_64-linux-gnu/baresip/modules"),
               Path("/usr/local/lib/baresip/modules"))


def sip_listen_port() -> int:
    """A port free for UDP and TCP whose successor is free for TCP too: libre also opens its TLS
    listener on sip_listen's port + 1, and baresip exits if any of the three binds fails."""
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for baresip")


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def account(user: str, transport: str, proxy_port: int, extra: str = "") -> str:
    """An RFC 5626 account line: `outbound=` is the outbound proxy (sent as a pre-loaded Route),
    `sipnat=outbound` adds +sip.instance / reg-id and starts the keep-alives."""
    return (f"<sip:{user}@{DOMAIN};transport={transport}>"
            f";outbound=\"sip:127.0.0.1:{proxy_port};transport={transport}\""
            f";sipnat=outbound;regint=60;answermode=auto;audio_codecs=PCMU{extra}")


class TraceEntry:
    """One SIP message from baresip's `-s` trace."""

    def __init__(self, proto: str, src: str, dst: str, text: str) -> None:
        self.proto, self.src, self.dst, self.text = proto, src, dst, text
        self.first_line = text.split("\r\n", 1)[0].split("\n", 1)[0]

    def header(self, name: str) -> list[str]:
        out = []
        for line in self.text.replace("\r\n", "\n").split("\n\n", 1)[0].split("\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                out.append(value.strip())
        return out

    def __repr__(self) -> str:
        return f"{self.proto} {self.src} -> {self.dst}: {self.first_line}"


class Baresip:
    """One baresip process with its own config directory, driven over ctrl_tcp."""

    def __init__(self, tmp_path: Path, name: str, config: str = CONFIG) -> None:
        """``config``: the config file, with {sip_port}, {ctrl_port} and {module_path}."""
        exe = require_tool("baresip", "apt-get install baresip")
        module_path = next((d for d in MODULE_DIRS if (d / "ctrl_tcp.so").exists()), None)
        if module_path is None:
            msg = f"baresip modules (ctrl_tcp.so, aubridge.so) not found in {MODULE_DIRS}"
            pytest.fail(msg) if in_ci() else pytest.skip(msg)
        self.name = name
        self.dir = tmp_path / f"baresip-{name}"
        self.dir.mkdir()
        self.sip_port = sip_listen_port()
        self.ctrl_port = free_port(both=False)
        while self.ctrl_port in (self.sip_port, self.sip_port + 1):  # probe ports can come back
            self.ctrl_port = free_port(both=False)
        (self.dir / "config").write_text(config.format(sip_port=self.sip_port, ctrl_port=self.ctrl_port,
                                                       module_path=module_path))
        (self.dir / "accounts").write_text("")
        # Fixed instance id so the test can look for it in the bindings (baresip reads this file).
        self.instance = str(uuid.uuid4())
        (self.dir / "uuid").write_text(self.instance)
        self.out_path = tmp_path / f"baresip-{name}.out"
        self._out = open(self.out_path, "wb")
        self.proc = subprocess.Popen([exe, "-f", str(self.dir), "-s"], stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=subprocess.STDOUT)
        self.messages: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._token = 0
        try:
            self.sock = self._connect()
        except AssertionError:
            self.proc.kill()
            self.proc.wait()
            self._out.close()
            raise
        threading.Thread(target=self._reader, daemon=True).start()

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"baresip {self.name} exited at start:\n{self.output()}")
            try:
                return socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=0.5)
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"baresip {self.name}: ctrl_tcp not reachable:\n{self.output()}") from None
                time.sleep(0.05)

    def _reader(self) -> None:
        buf = b""
        self.sock.settimeout(None)
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            buf += data
            while True:  # netstrings: LEN ":" JSON ","
                head, sep, rest = buf.partition(b":")
                if not sep or not head.isdigit() or len(rest) < int(head) + 1:
                    break
                n = int(head)
                msg = json.loads(rest[:n])
                buf = rest[n + 1:]
                with self._cond:
                    self.messages.append(msg)
                    self._cond.notify_all()
        with self._cond:
            self.messages.append({"closed": True})
            self._cond.notify_all()

    def _wait_for(self, match: Callable[[dict[str, Any]], bool], timeout: float, what: str,
                  start: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for msg in self.messages[start:]:
                    if match(msg):
                        return msg
                left = deadline - time.monotonic()
                if left <= 0 or any(m.get("closed") for m in self.messages):
                    raise AssertionError(f"baresip {self.name}: no {what} within {timeout}s; "
                                         f"events: {self.event_types()}")
                self._cond.wait(left)

    def command(self, cmd: str, params: str = "", timeout: float = 5) -> str:
        self._token += 1
        token = f"{self.name}-{self._token}"
        body = json.dumps({"command": cmd, "params": params, "token": token}).encode()
        self.sock.sendall(str(len(body)).encode() + b":" + body + b",")
        resp = self._wait_for(lambda m: m.get("response") and m.get("token") == token, timeout,
                              f"response to {cmd}")
        assert resp.get("ok"), f"baresip {self.name}: {cmd} {params!r} failed: {resp}"
        return strip_ansi(str(resp.get("data", "")))

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def wait_event(self, types: set[str], timeout: float, start: int = 0, aor: str | None = None) -> dict[str, Any]:
        return self._wait_for(
            lambda m: bool(m.get("event")) and m.get("type") in types
            and (aor is None or m.get("accountaor") == aor),
            timeout, "/".join(sorted(types)), start)

    def event_types(self) -> list[str]:
        return [f"{m.get('type')}({m.get('param', '')})" for m in self.messages if m.get("event")]

    def register(self, line: str, timeout: float = 10) -> dict[str, Any]:
        """Create a UA with `uanew` and return its REGISTER_OK or REGISTER_FAIL event."""
        start = self.mark()
        aor = re.match(r"<(sip:[^;>]+)", line)
        assert aor is not None
        self.command("uanew", line)
        return self.wait_event({"REGISTER_OK", "REGISTER_FAIL"}, timeout, start, aor=aor.group(1))

    def stop(self) -> None:
        if self._out.closed:
            return
        if self.proc.poll() is None:
            try:
                self.command("quit", timeout=3)
            except (AssertionError, OSError):
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(3)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self.sock.close()
        self._out.close()

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return strip_ansi(self.out_path.read_text(errors="replace"))

    def trace(self) -> list[TraceEntry]:
        """SIP messages baresip sent and received (complete only once the process has exited)."""
        text = self.output()
        pat = re.compile(r"^(UDP|TCP|TLS|WS|WSS) (\S+) -> (\S+)\r?\n(.*?)(?=^#\r?\n|\Z)", re.S | re.M)
        return [TraceEntry(m.group(1), m.group(2), m.group(3), m.group(4)) for m in pat.finditer(text)]


class UdpRelay:
    """A transparent UDP hop between one baresip and the server, so the test sees every datagram
    (STUN included) without a packet capture. The server sees the relay's back socket as the flow;
    the Contact baresip registers names baresip's own port, so a request that reaches baresip
    through the relay was routed by flow, not by Contact (RFC 5626 §5.3).

    baresip puts the outbound proxy (this relay) in a Route header; the relay rewrites it to the
    server's address so the server does not forward the request back here as a foreign Route."""

    def __init__(self, server_port: int) -> None:
        self.server = ("127.0.0.1", server_port)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        self.port = self.front.getsockname()[1]
        self.back_addr = self.back.getsockname()
        self.client: tuple[str, int] | None = None
        self.log: list[tuple[str, bytes]] = []  # ("up" | "down", datagram)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rewrite(self, data: bytes) -> bytes:
        if data[:1] < b"\x40":  # STUN is forwarded untouched
            return data
        head, sep, body = data.partition(b"\r\n\r\n")
        ours = f"127.0.0.1:{self.port}".encode()
        return head.replace(ours, f"127.0.0.1:{self.server[1]}".encode()) + sep + body

    def _run(self) -> None:
        while not self._stop:
            ready, _, _ = select.select([self.front, self.back], [], [], 0.1)
            for sock in ready:
                try:
                    data, addr = sock.recvfrom(65535)
                except OSError:
                    continue
                if sock is self.front:
                    self.client = addr
                    self.log.append(("up", data))
                    self.back.sendto(self._rewrite(data), self.server)
                elif self.client is not None:
                    self.log.append(("down", data))
                    self.front.sendto(data, self.client)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.front.close()
        self.back.close()

    def stun(self) -> list[tuple[str, bytes]]:
        return [(d, p) for d, p in list(self.log)
                if len(p) >= 20 and p[0] < 0x40 and struct.unpack("!I", p[4:8])[0] == STUN_COOKIE]

    def sip(self, direction: str) -> list[str]:
        return [p.split(b"\r\n", 1)[0].decode(errors="replace") for d, p in list(self.log)
                if d == direction and p[:1] >= b"\x40"]


def xor_mapped_address(msg: bytes) -> tuple[str, int] | None:
    """XOR-MAPPED-ADDRESS (RFC 5389 §15.2) of a STUN message, IPv4 only."""
    pos = 20
    while pos + 4 <= len(msg):
        atype, alen = struct.unpack("!HH", msg[pos:pos + 4])
        value = msg[pos + 4:pos + 4 + alen]
        if atype == 0x0020 and alen >= 8 and value[1] == 0x01:
            port = struct.unpack("!H", value[2:4])[0] ^ (STUN_COOKIE >> 16)
            addr = struct.unpack("!I", value[4:8])[0] ^ STUN_COOKIE
            return socket.inet_ntoa(struct.pack("!I", addr)), port
        pos += 4 + alen + (-alen % 4)
    return None


def query_bindings(server: ServerProcess, user: str) -> str:
    """A REGISTER without Contact over UDP: the 200 OK lists the AoR's current bindings
    (RFC 3261 §10.2.3)."""
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(3)
        port = s.getsockname()[1]
        req = (f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=q{branch[-6:]}\r\n"
               f"To: <sip:{user}@{DOMAIN}>\r\nCall-ID: query-{branch}\r\nCSeq: 1 REGISTER\r\n"
               f"Content-Length: 0\r\n\r\n")
        s.sendto(req.encode(), ("127.0.0.1", server.port))
        while True:
            data = s.recv(65535).decode(errors="replace")
            if not data.startswith("SIP/2.0 1"):
                return data


def contacts_of(response: str) -> list[str]:
    out = []
    for line in response.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() in ("contact", "m"):
            out.append(value.strip())
    return out


def report(server: ServerProcess, *uas: Baresip, extra: str = "") -> str:
    parts = [extra] if extra else []
    for ua in uas:
        parts.append(f"===== baresip {ua.name} events: {ua.event_types()}\n"
                     f"===== baresip {ua.name} output:\n{ua.output()}")
    parts.append(f"===== server log:\n{server.output()}")
    return "\n".join(parts)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Factory for servers, baresips and relays, all stopped (UAs first) at teardown."""
    uas: list[Baresip] = []
    servers: list[ServerProcess] = []
    relays: list[UdpRelay] = []

    def make(kind: str, *args: Any, **kw: Any) -> Any:
        if kind == "server":
            require_tool("baresip", "apt-get install baresip")
            srv = ServerProcess(tmp_path, **kw)
            servers.append(srv)
            return srv
        if kind == "relay":
            relay = UdpRelay(*args)
            relays.append(relay)
            return relay
        ua = Baresip(tmp_path, *args)
        uas.append(ua)
        return ua

    yield make
    for ua in uas:
        ua.stop()
    for relay in relays:
        relay.close()
    for srv in servers:
        srv.stop()


def stop_all(*uas: Baresip) -> None:
    for ua in uas:
        ua.stop()


def assert_registered(event: dict[str, Any], server: ServerProcess, *uas: Baresip) -> None:
    if event.get("type") != "REGISTER_OK":
        stop_all(*uas)
        raise AssertionError(report(server, *uas, extra=f"expected REGISTER_OK, got {event}"))


def assert_server_clean(server: ServerProcess) -> None:
    """No exception or error record in the server log: anything baresip sent was handled."""
    bad = [line for line in server.output().splitlines()
           if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]
    assert not bad, report(server, extra="server logged errors:\n" + "\n".join(bad))


def check_call(server: ServerProcess, alice: Baresip, bob: Baresip) -> None:
    """alice dials bob (who answers automatically), both reach ESTABLISHED, alice hangs up, both
    see the call closed."""
    a0, b0 = alice.mark(), bob.mark()
    try:
        alice.command("dial", f"sip:bob@{DOMAIN}")
        bob.wait_event({"CALL_ESTABLISHED"}, 10, b0)
        alice.wait_event({"CALL_ESTABLISHED"}, 10, a0)
        a1, b1 = alice.mark(), bob.mark()
        alice.command("hangup")
        alice.wait_event({"CALL_CLOSED"}, 10, a1)
        bob.wait_event({"CALL_CLOSED"}, 10, b1)
    except AssertionError as exc:
        stop_all(alice, bob)
        raise AssertionError(report(server, alice, bob, extra=str(exc))) from None


def test_tcp_outbound_registration_ob_cs_01(started: Callable[..., Any]) -> None:
    """OB-CS-01 / OB-REG: two baresips register over TCP with sipnat=outbound; the 200 OK carries
    Require: outbound and Flow-Timer, and the stored bindings keep +sip.instance and reg-id."""
    server = started("server")
    alice, bob = started("ua", "alice"), started("ua", "bob")
    for ua in (alice, bob):
        assert_registered(ua.register(account(ua.name, "tcp", server.port)), server, alice, bob)
        info = ua.command("reginfo")
        assert re.search(rf"sip:{ua.name}@{DOMAIN}\s+OK\b", info), report(server, alice, bob, extra=info)

    for ua in (alice, bob):
        contacts = contacts_of(query_bindings(server, ua.name))
        mine = [c for c in contacts if ua.instance in c]
        assert len(mine) == 1, report(server, alice, bob, extra=f"bindings of {ua.name}: {contacts}")
        assert re.search(r";\s*reg-id=1\b", mine[0]), mine[0]
        assert re.search(rf'\+sip\.instance="<urn:uuid:{ua.instance}>"', mine[0]), mine[0]

    stop_all(alice, bob)
    for ua in (alice, bob):
        oks = [e for e in ua.trace() if e.first_line.startswith("SIP/2.0 200")
               and "REGISTER" in " ".join(e.header("CSeq")) and e.header("Contact")]
        assert oks, report(server, ua, extra=f"no 200 OK to REGISTER in {ua.name}'s trace")
        required = re.split(r"\s*,\s*", ",".join(oks[0].header("Require")).lower())
        assert "outbound" in required, oks[0].text
        assert oks[0].header("Flow-Timer"), oks[0].text
    assert_server_clean(server)


def test_tcp_call_routed_over_registered_flow_ob_cs_04(started: Callable[..., Any]) -> None:
    """OB-CS-04 / OB-CS-05: alice calls bob through the server over TCP. The INVITE reaches bob on
    the connection bob registered over (the server never opens a connection to bob's Contact),
    the call is established on both sides, and alice's BYE closes it on both."""
    server = started("server")
    alice, bob = started("ua", "alice"), started("ua", "bob")
    for ua in (alice, bob):
        assert_registered(ua.register(account(ua.name, "tcp", server.port)), server, alice, bob)

    check_call(server, alice, bob)
    stop_all(alice, bob)

    trace = bob.trace()
    reg = next((e for e in trace if e.first_line.startswith("REGISTER ")), None)
    invite = next((e for e in trace if e.first_line.startswith("INVITE ")), None)
    assert reg is not None and invite is not None, report(server, bob, extra=f"bob's trace: {trace}")
    # bob's trace writes "local -> remote" for what it sends and "remote -> local" for what it gets.
    assert invite.dst == reg.src, report(server, bob, extra=f"INVITE on {invite}, REGISTER on {reg}")
    assert invite.dst != f"127.0.0.1:{bob.sip_port}"
    assert f"127.0.0.1:{bob.sip_port}" in invite.first_line  # Request-URI = registered Contact
    assert not re.search(rf"flow tcp:\S+-127\.0\.0\.1:{bob.sip_port}#", server.output()), server.output()

    bye = [e for e in bob.trace() if e.first_line.startswith("BYE ")]
    assert bye and bye[0].dst == reg.src, report(server, bob, extra="BYE did not arrive on bob's flow")
    assert_server_clean(server)


def test_udp_outbound_stun_keepalive_and_call_ob_stun_01(started: Callable[..., Any]) -> None:
    """OB-STUN-01/02 and OB-CS-04 over UDP: with sipnat=outbound over UDP libre sends a STUN
    Binding request to the registrar right after the 200 OK (RFC 5626 §4.4.2, 'learn the mapped
    address'); the server answers it on the SIP port with XOR-MAPPED-ADDRESS = the flow's source.
    A call to bob then goes out over bob's UDP flow (through the relay), not to his Contact."""
    server = started("server")
    relays = {name: started("relay", server.port) for name in ("alice", "bob")}
    alice, bob = started("ua", "alice"), started("ua", "bob")
    for ua in (alice, bob):
        assert_registered(ua.register(account(ua.name, "udp", relays[ua.name].port)), server, alice, bob)
        info = ua.command("reginfo")
        assert re.search(rf"sip:{ua.name}@{DOMAIN}\s+OK\b", info), report(server, alice, bob, extra=info)

    for name, relay in relays.items():
        deadline = time.monotonic() + 5
        answered: list[bytes] = []
        while time.monotonic() < deadline and not answered:
            msgs = relay.stun()
            requests = {p[8:20] for d, p in msgs if d == "up" and p[:2] == b"\x00\x01"}
            answered = [p for d, p in msgs if d == "down" and p[:2] == b"\x01\x01" and p[8:20] in requests]
            time.sleep(0.05)
        assert answered, report(server, alice, bob, extra=f"{name}: STUN seen by relay: {relay.stun()}")
        assert xor_mapped_address(answered[0]) == relay.back_addr, answered[0].hex()

    check_call(server, alice, bob)
    invites = [line for line in relays["bob"].sip("down") if line.startswith("INVITE ")]
    assert invites, report(server, alice, bob, extra=f"bob's relay saw: {relays['bob'].sip('down')}")
    assert f"127.0.0.1:{bob.sip_port}" in invites[0]  # Request-URI is bob's own (bypassed) Contact
    assert_server_clean(server)


def _xfail_if_libre_rejects_sha256(ua: Baresip, event: dict[str, Any]) -> None:
    """libre 1.1.0 (baresip 1.0.0) only knows MD5 and walks every WWW-Authenticate of a 401: the
    first one whose algorithm is not MD5 ends the attempt with ENOSYS, even when an MD5 challenge
    is also offered (RFC 8760 §2.4 wants a UA to skip algorithms it does not know). A server that
    offers SHA-256 next to MD5 therefore locks such a UA out; report that precisely instead of
    failing on it, and pass as soon as the server can be made to offer MD5 alone."""
    if event.get("param") != "Function not implemented":
        return
    first_401 = next((e for e in ua.trace() if e.first_line.startswith("SIP/2.0 401")), None)
    if first_401 is None:
        return
    algorithms = [m.group(1).upper() for c in first_401.header("WWW-Authenticate")
                  for m in [re.search(r"algorithm=\"?([\w-]+)", c, re.I)] if m]
    if any(a != "MD5" for a in algorithms):
        pytest.xfail(f"server challenges with algorithms {algorithms}; baresip 1.0.0 (libre 1.1.0) "
                     "gives up (ENOSYS) on any non-MD5 WWW-Authenticate instead of using the MD5 one")


USERS = '[users.alice]\npassword = "pw1"\n[users.bob]\npassword = "pw2"\n'
# What baresip 1.0.0 needs: one MD5 challenge and nothing else (see _xfail_if_libre_rejects_sha256).
MD5_ONLY = '[auth]\nalgorithms = ["MD5"]\n'


def test_digest_auth_default_algorithms_registers(started: Callable[..., Any]) -> None:
    """RFC 3261 §22 / RFC 7616 / RFC 8760: with [users] configured and the default challenge set,
    alice registers (outbound over TCP) after answering the 401 with auth_pass. Expected to xfail
    with baresip 1.0.0 while the default challenge set includes SHA-256."""
    server = started("server", config=USERS)
    alice = started("ua", "alice")
    event = alice.register(account("alice", "tcp", server.port, ";auth_pass=pw1"))
    if event.get("type") != "REGISTER_OK":
        alice.stop()
        _xfail_if_libre_rejects_sha256(alice, event)
    assert_registered(event, server, alice)
    assert_server_clean(server)


def test_digest_auth_md5_correct_password_registers(started: Callable[..., Any]) -> None:
    """RFC 3261 §22.4: with `auth.algorithms = ["MD5"]` alice answers the 401 with auth_pass and is
    registered with her outbound binding."""
    server = started("server", config=MD5_ONLY + USERS)
    alice = started("ua", "alice")
    assert_registered(alice.register(account("alice", "tcp", server.port, ";auth_pass=pw1")), server, alice)
    alice.stop()
    trace = alice.trace()
    authorized = [e for e in trace if e.first_line.startswith("REGISTER ") and e.header("Authorization")]
    assert authorized, report(server, alice, extra="no Authorization in alice's REGISTERs")
    algorithm = re.search(r"algorithm=\"?([\w-]+)", authorized[0].header("Authorization")[0])
    assert algorithm is None or algorithm.group(1).upper() == "MD5", authorized[0].text
    assert_server_clean(server)


def test_digest_auth_md5_wrong_password_not_registered(started: Callable[..., Any]) -> None:
    """RFC 3261 §22.4: bob answers the challenge with the wrong password; the server rejects the
    credentials (401 again or 403) and bob is not registered."""
    server = started("server", config=MD5_ONLY + USERS)
    bob = started("ua", "bob")
    event = bob.register(account("bob", "tcp", server.port, ";auth_pass=wrong"))
    assert event.get("type") == "REGISTER_FAIL", report(server, bob, extra=str(event))
    bob.stop()
    trace = bob.trace()
    assert not any(e.first_line.startswith("SIP/2.0 2") and "REGISTER" in " ".join(e.header("CSeq"))
                   for e in trace), report(server, bob)
    authorized = [i for i, e in enumerate(trace)
                  if e.first_line.startswith("REGISTER ") and e.header("Authorization")]
    assert authorized, report(server, bob, extra="baresip never sent credentials")
    after = [e.first_line for e in trace[authorized[0] + 1:] if e.first_line.startswith("SIP/2.0")]
    assert after and after[0].split()[1] in ("401", "403"), report(server, bob, extra=str(after))
    assert "BindingAdded(aor='bob@" not in server.output(), report(server, bob)
    assert_server_clean(server)


def test_digest_auth_md5_call_between_authenticated_users(started: Callable[..., Any]) -> None:
    """With auth on, alice and bob register with their passwords and alice calls bob: the INVITE
    either passes on alice's authenticated flow or is challenged (407) and answered, and the call
    is established and closed on both sides."""
    server = started("server", config=MD5_ONLY + USERS)
    alice, bob = started("ua", "alice"), started("ua", "bob")
    for ua, pw in ((alice, "pw1"), (bob, "pw2")):
        assert_registered(ua.register(account(ua.name, "tcp", server.port, f";auth_pass={pw}")), server, alice, bob)
    check_call(server, alice, bob)
    assert_server_clean(server)
