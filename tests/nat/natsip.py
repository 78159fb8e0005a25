"""Raw-socket SIP user agents for the NAT tests: each one is a socket (opened inside a namespace,
see natlab) plus a reader thread that answers OPTIONS and BYE with 200 as a phone's SIP stack
does, and keeps everything but OPTIONS for the test to take. Every message in and out is logged with its time,
so a test can say what a phone did during a silence and a failure shows the whole exchange.

Deliberately small: no SDP, no retransmissions (namespaces do not lose packets), one dialog
helper for both sides of a call (RFC 3261 §12: route set, remote target, tags)."""

from __future__ import annotations

import base64
import os
import random
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

DOMAIN = "example.com"
STUN_COOKIE = 0x2112A442
COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
           "c": "content-type", "k": "supported", "o": "event", "x": "session-expires"}
MULTI = {"via", "route", "record-route", "path", "contact", "supported", "require"}


def split_values(value: str) -> list[str]:
    """Comma-separated header values, commas inside <...> or quotes kept."""
    out: list[str] = []
    cur: list[str] = []
    depth, quoted = 0, False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def param(value: str, name: str) -> str | None:
    """A ;name=value parameter outside <...> (for a tag) or anywhere (for Via parameters)."""
    tail = value.rsplit(">", 1)[-1]
    for part in tail.split(";")[1:]:
        key, _, val = part.partition("=")
        if key.strip().lower() == name:
            return val.strip()
    return None


class Msg:
    """One parsed SIP message (headers by lower-case full name; compact forms expanded)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.text = raw.decode("utf-8", "replace")
        head, _, self.body = self.text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        self.first = lines[0]
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and self.headers:
                name, value = self.headers[-1]
                self.headers[-1] = (name, value + " " + line.strip())
                continue
            name, _, value = line.partition(":")
            key = name.strip().lower()
            self.headers.append((COMPACT.get(key, key), value.strip()))

    @property
    def is_request(self) -> bool:
        return not self.first.startswith("SIP/2.0 ")

    @property
    def status(self) -> int:
        return int(self.first.split()[1]) if not self.is_request else 0

    @property
    def method(self) -> str:
        return self.first.split()[0] if self.is_request else self.cseq[1]

    @property
    def uri(self) -> str:
        return self.first.split()[1]

    def all(self, name: str) -> list[str]:
        name = name.lower()
        out: list[str] = []
        for key, value in self.headers:
            if key == name:
                out.extend(split_values(value) if name in MULTI else [value])
        return out

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    @property
    def cseq(self) -> tuple[int, str]:
        num, method = (self.get("cseq") or "0 ?").split()
        return int(num), method

    @property
    def call_id(self) -> str:
        return self.get("call-id") or ""

    def tag(self, header: str) -> str | None:
        value = self.get(header)
        return param(value, "tag") if value else None

    def __repr__(self) -> str:
        return f"<{self.first}>"


def uri_of(name_addr: str) -> str:
    if "<" in name_addr:
        return name_addr.split("<", 1)[1].split(">", 1)[0]
    return name_addr.split(";", 1)[0].strip()


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def stun_binding_request() -> tuple[bytes, bytes]:
    txid = os.urandom(12)
    return struct.pack("!HHI", 0x0001, 0, STUN_COOKIE) + txid, txid


def xor_mapped_address(msg: bytes) -> tuple[str, int] | None:
    """XOR-MAPPED-ADDRESS of a STUN message (RFC 5389 §15.2), IPv4 only."""
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


# ----------------------------------------------------------------------------------------------
# Channels: one socket each, a reader thread, and a callback per SIP message or keepalive.

OnMessage = Callable[[Msg], None]
OnKeepalive = Callable[[str, bytes], None]


class Channel:
    transport = "UDP"

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False
        self._lock = threading.Lock()
        self.local = sock.getsockname()

    def start(self, on_message: OnMessage, on_keepalive: OnKeepalive) -> None:
        self.on_message, self.on_keepalive = on_message, on_keepalive
        threading.Thread(target=self._reader, daemon=True, name=f"reader-{self.local}").start()

    def send(self, data: bytes) -> None:
        with self._lock:
            self._send(data)

    def _send(self, data: bytes) -> None:
        raise NotImplementedError

    def _reader(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class UdpChannel(Channel):
    def __init__(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        super().__init__(sock)
        self.peer = peer
        self.sources: set[tuple[str, int]] = set()
        sock.settimeout(0.2)

    def _send(self, data: bytes) -> None:
        self.sock.sendto(data, self.peer)

    def _reader(self) -> None:
        while not self.closed:
            try:
                data, src = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                if self.closed:
                    return
                continue  # ICMP errors reported on the socket
            self.sources.add(src)
            if data.strip(b"\r\n") == b"":
                self.on_keepalive("crlf", data)
            elif data[0] < 0x40 and len(data) >= 20:
                self.on_keepalive("stun", data)
            else:
                self.on_message(Msg(data))


class StreamChannel(Channel):
    """TCP: messages framed by Content-Length; a lone CRLF is a keepalive pong (RFC 5626 §4.4.1)."""

    transport = "TCP"

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        sock.settimeout(None)

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _reader(self) -> None:
        buf = b""
        while not self.closed:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                self.on_keepalive("closed", b"")
                return
            buf += chunk
            while True:
                stripped = buf.lstrip(b"\r\n")
                if len(stripped) != len(buf):
                    self.on_keepalive("crlf", buf[:len(buf) - len(stripped)])
                    buf = stripped
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                length = 0
                for line in buf[:end].split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() in (b"content-length", b"l"):
                        length = int(value.strip())
                if len(buf) < end + 4 + length:
                    break
                self.on_message(Msg(buf[:end + 4 + length]))
                buf = buf[end + 4 + length:]


class WsChannel(Channel):
    """WebSocket (RFC 6455) with the sip subprotocol (RFC 7118): one SIP message per frame."""

    transport = "WS"

    def __init__(self, sock: socket.socket, host: str, path: str = "/") -> None:
        super().__init__(sock)
        sock.settimeout(5)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      f"Sec-WebSocket-Protocol: sip\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"WebSocket handshake: connection closed after {head!r}")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError(f"WebSocket handshake refused: {head!r}")
        self._pending = head.split(b"\r\n\r\n", 1)[1]
        sock.settimeout(None)

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    def _send(self, data: bytes) -> None:
        self.sock.sendall(self._frame(0x1, data))

    def _reader(self) -> None:
        buf = self._pending
        while not self.closed:
            while True:
                if len(buf) < 2:
                    break
                b0, b1 = buf[0], buf[1]
                n, pos = b1 & 0x7F, 2
                if n == 126:
                    if len(buf) < 4:
                        break
                    n, pos = struct.unpack("!H", buf[2:4])[0], 4
                elif n == 127:
                    if len(buf) < 10:
                        break
                    n, pos = struct.unpack("!Q", buf[2:10])[0], 10
                mask = b""
                if b1 & 0x80:
                    mask, pos = buf[pos:pos + 4], pos + 4
                if len(buf) < pos + n:
                    break
                payload = buf[pos:pos + n]
                if mask:
                    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                buf = buf[pos + n:]
                opcode = b0 & 0x0F
                if opcode in (0x1, 0x2):
                    self.on_message(Msg(payload))
                elif opcode == 0x9:
                    self.send_control(0xA, payload)
                elif opcode == 0x8:
                    self.on_keepalive("closed", payload)
                    return
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                self.on_keepalive("closed", b"")
                return
            buf += chunk

    def send_control(self, opcode: int, payload: bytes) -> None:
        with self._lock:
            self.sock.sendall(self._frame(opcode, payload))


# ----------------------------------------------------------------------------------------------


@dataclass
class Event:
    t: float
    direction: str  # "in" | "out"
    kind: str       # "sip" | "crlf" | "stun" | "closed"
    first: str
    msg: Msg | None = None
    data: bytes = b""


@dataclass
class Call:
    call_id: str
    tag: str
    target: str


@dataclass
class Dialog:
    """RFC 3261 §12: what both ends keep to send in-dialog requests."""

    call_id: str
    local_uri: str
    local_tag: str
    remote_uri: str
    remote_tag: str
    remote_target: str
    route_set: list[str]
    cseq: int = 1
    invite: Msg | None = field(default=None, repr=False)


class UA:
    """A SIP phone: `user@DOMAIN` on one channel, with `contact_host` (host:port it believes it
    has: a private address behind the NAT) in Contact and Via."""

    def __init__(self, name: str, user: str, channel: Channel, contact_host: str,
                 answer_options: bool = True, contact_params: str = "") -> None:
        self.name, self.user, self.channel = name, user, channel
        self.contact_host = contact_host
        self.answer_options = answer_options
        self.contact_params = contact_params
        self.aor = f"sip:{user}@{DOMAIN}"
        self.t0 = time.monotonic()
        self.events: list[Event] = []
        self.received: list[Msg] = []
        self._taken: set[int] = set()
        self._cond = threading.Condition()
        self.reg_call_id = secrets.token_hex(8)
        self.reg_cseq = 0
        self.tag = secrets.token_hex(4)
        channel.start(self._on_message, self._on_keepalive)

    # --- wire -------------------------------------------------------------------------------

    @property
    def transport(self) -> str:
        return self.channel.transport

    @property
    def transport_param(self) -> str:
        return "" if self.transport == "UDP" else f";transport={self.transport.lower()}"

    def contact(self, extra: str = "") -> str:
        return f"<sip:{self.user}@{self.contact_host}{self.transport_param}{extra}>{self.contact_params}"

    def _record(self, direction: str, kind: str, first: str, msg: Msg | None = None, data: bytes = b"") -> None:
        with self._cond:
            self.events.append(Event(time.monotonic(), direction, kind, first, msg, data))
            self._cond.notify_all()

    def send(self, text: str) -> None:
        data = text.encode()
        self._record("out", "sip", text.split("\r\n", 1)[0], Msg(data))
        self.channel.send(data)

    def send_raw(self, kind: str, data: bytes) -> None:
        self._record("out", kind, kind, data=data)
        self.channel.send(data)

    def _on_message(self, msg: Msg) -> None:
        self._record("in", "sip", msg.first, msg)
        if msg.is_request and msg.method == "OPTIONS" and self.answer_options:
            self.send(self.response(msg, 200, "OK"))
            return
        if msg.is_request and msg.method == "BYE":
            self.send(self.response(msg, 200, "OK"))  # and kept: the test asserts it arrived
        with self._cond:
            self.received.append(msg)
            self._cond.notify_all()

    def _on_keepalive(self, kind: str, data: bytes) -> None:
        self._record("in", kind, kind, data=data)

    def close(self) -> None:
        self.channel.close()

    # --- waiting ----------------------------------------------------------------------------

    def wait(self, pred: Callable[[Msg], bool], timeout: float, what: str) -> Msg:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, msg in enumerate(self.received):
                    if i not in self._taken and pred(msg):
                        self._taken.add(i)
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: no {what} within {timeout:g} s\n{self.transcript()}")
                self._cond.wait(left)

    def poll(self, pred: Callable[[Msg], bool], timeout: float) -> Msg | None:
        try:
            return self.wait(pred, timeout, "")
        except AssertionError:
            return None

    def expect_request(self, method: str, timeout: float = 5, call_id: str | None = None) -> Msg:
        return self.wait(lambda m: m.is_request and m.method == method and (call_id is None or m.call_id == call_id),
                         timeout, f"{method}" + (f" of call {call_id}" if call_id else ""))

    def expect_final(self, call_id: str, method: str, timeout: float = 5) -> Msg:
        return self.wait(lambda m: not m.is_request and m.call_id == call_id and m.cseq[1] == method and m.status >= 200,
                         timeout, f"final response to {method} ({call_id})")

    def wait_event(self, pred: Callable[[Event], bool], timeout: float, what: str, since: float = 0.0) -> Event:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if ev.t >= since and pred(ev):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: no {what} within {timeout:g} s\n{self.transcript()}")
                self._cond.wait(left)

    def events_between(self, start: float, end: float) -> list[Event]:
        with self._cond:
            return [e for e in self.events if start <= e.t <= end]

    def transcript(self) -> str:
        with self._cond:
            return "\n".join(f"  {self.name} {e.t - self.t0:7.2f} {'<-' if e.direction == 'in' else '->'} {e.first}"
                             for e in self.events)

    def messages_in(self) -> list[Msg]:
        with self._cond:
            return [e.msg for e in self.events if e.direction == "in" and e.msg is not None]

    # --- building ---------------------------------------------------------------------------

    def via(self, branch: str) -> str:
        return f"SIP/2.0/{self.transport} {self.contact_host};branch={branch};rport"

    def request(self, method: str, uri: str, *, call_id: str, cseq: int, to: str, to_tag: str | None = None,
                from_uri: str | None = None, from_tag: str | None = None, routes: list[str] | None = None,
                contact: bool = True, extra: list[str] | None = None, branch: str | None = None,
                cseq_method: str | None = None) -> str:
        lines = [f"{method} {uri} SIP/2.0",
                 f"Via: {self.via(branch or new_branch())}",
                 "Max-Forwards: 70",
                 f"From: <{from_uri or self.aor}>;tag={from_tag or self.tag}",
                 f"To: <{to}>" + (f";tag={to_tag}" if to_tag else ""),
                 f"Call-ID: {call_id}",
                 f"CSeq: {cseq} {cseq_method or method}"]
        lines += [f"Route: {r}" for r in routes or []]
        if contact:
            lines.append(f"Contact: {self.contact()}")
        lines += extra or []
        lines += ["Content-Length: 0", "", ""]
        return "\r\n".join(lines)

    def response(self, req: Msg, status: int, reason: str, to_tag: str | None = None, contact: bool = False,
                 record_route: bool = False) -> str:
        lines = [f"SIP/2.0 {status} {reason}"]
        lines += [f"Via: {v}" for v in req.all("via")]
        if record_route:
            lines += [f"Record-Route: {r}" for r in req.all("record-route")]
        lines.append(f"From: {req.get('from')}")
        to = req.get("to") or ""
        if to_tag and param(to, "tag") is None:
            to += f";tag={to_tag}"
        lines += [f"To: {to}", f"Call-ID: {req.call_id}", f"CSeq: {req.get('cseq')}"]
        if contact:
            lines.append(f"Contact: {self.contact()}")
        lines += ["Content-Length: 0", "", ""]
        return "\r\n".join(lines)

    # --- procedures -------------------------------------------------------------------------

    def register(self, *, expires: int = 3600, outbound: bool = False, instance: str | None = None,
                 reg_id: int = 1, extra: list[str] | None = None, timeout: float = 5) -> Msg:
        """REGISTER from this socket; a phone without outbound by default (no Supported:
        outbound, no reg-id, no ;ob). Returns the 200 OK (AssertionError otherwise)."""
        self.reg_cseq += 1
        headers = [f"Expires: {expires}"] + (extra or [])
        saved = self.contact_params
        if outbound:
            headers.append("Supported: outbound, path")
            self.contact_params = (f';reg-id={reg_id};+sip.instance="<urn:uuid:{instance}>"')
            contact_extra = ";ob"
        else:
            contact_extra = ""
        try:
            text = self.request("REGISTER", f"sip:{DOMAIN}", call_id=self.reg_call_id, cseq=self.reg_cseq,
                                to=self.aor, from_tag=secrets.token_hex(4), contact=False,
                                extra=[f"Contact: {self.contact(contact_extra)}"] + headers)
        finally:
            self.contact_params = saved
        self.send(text)
        resp = self.expect_final(self.reg_call_id, "REGISTER", timeout)
        assert resp.status == 200, f"{self.name}: REGISTER got {resp.first}\n{self.transcript()}"
        return resp

    def send_invite(self, target: str) -> Call:
        """Send an INVITE for target through the server (wait with complete_invite)."""
        call = Call(call_id=secrets.token_hex(8), tag=secrets.token_hex(4), target=target)
        self.send(self.request("INVITE", target, call_id=call.call_id, cseq=1, to=target, from_tag=call.tag))
        return call

    def complete_invite(self, call: Call, timeout: float = 5) -> tuple[Dialog, Msg]:
        """Wait for the final response to call's INVITE and ACK a 2xx (RFC 3261 §13.2.2.4)."""
        final = self.expect_final(call.call_id, "INVITE", timeout)
        dialog = Dialog(call_id=call.call_id, local_uri=self.aor, local_tag=call.tag, remote_uri=call.target,
                        remote_tag=final.tag("to") or "", remote_target=uri_of(final.get("contact") or call.target),
                        route_set=list(reversed(final.all("record-route"))), cseq=1)
        if 200 <= final.status < 300:
            self.send(self.request("ACK", dialog.remote_target, call_id=call.call_id, cseq=1, to=call.target,
                                   to_tag=dialog.remote_tag, from_tag=call.tag, routes=dialog.route_set,
                                   contact=False))
        return dialog, final

    def answer(self, invite: Msg, status: int = 200, reason: str = "OK") -> Dialog:
        """Answer an INVITE (200: with Contact and the Record-Route it carried)."""
        tag = secrets.token_hex(4)
        self.send(self.response(invite, status, reason, to_tag=tag, contact=status < 300,
                                record_route=status < 300))
        return Dialog(call_id=invite.call_id, local_uri=uri_of(invite.get("to") or ""), local_tag=tag,
                      remote_uri=uri_of(invite.get("from") or ""), remote_tag=invite.tag("from") or "",
                      remote_target=uri_of(invite.get("contact") or ""), route_set=invite.all("record-route"),
                      cseq=100, invite=invite)

    def bye(self, dialog: Dialog, timeout: float = 5) -> Msg:
        dialog.cseq += 1
        self.send(self.request("BYE", dialog.remote_target, call_id=dialog.call_id, cseq=dialog.cseq,
                               to=dialog.remote_uri, to_tag=dialog.remote_tag, from_uri=dialog.local_uri,
                               from_tag=dialog.local_tag, routes=dialog.route_set, contact=False))
        return self.expect_final(dialog.call_id, "BYE", timeout)

    # --- outbound keepalives (RFC 5626 §4.4.1) ----------------------------------------------

    def keep_alive(self, kind: str, flow_timer: float, stop: threading.Event) -> threading.Thread:
        """Send a CRLFCRLF ping or a STUN Binding request every 80-100 % of flow_timer until stop."""

        def loop() -> None:
            while not stop.wait(flow_timer * random.uniform(0.8, 1.0)):
                try:
                    if kind == "stun":
                        self.send_raw("stun", stun_binding_request()[0])
                    else:
                        self.send_raw("crlf", b"\r\n\r\n")
                except OSError:
                    return

        t = threading.Thread(target=loop, daemon=True, name=f"keepalive-{self.name}")
        t.start()
        return t
