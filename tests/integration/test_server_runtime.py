"""The running server over every transport (issue: server runtime and transports)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio_websocket
from certs import client_context, make_self_signed
from harness import TcpUA, UdpUA, WsUA, addr, request, running_server
from transport_fixtures import ipv6_available

from sipserver.outbound.stun import binding_request, parse_xor_mapped_address
from sipserver.sip import Response, parse_message

V6 = pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback on this machine")


def options(ua) -> str:  # type: ignore[no-untyped-def]
    return request(ua, "OPTIONS", "sip:example.com")


async def test_options_every_plain_transport_ipv4_and_ipv6(tmp_path: Path) -> None:
    listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0", "ws:127.0.0.1:0"]
    if ipv6_available():
        listen += ["udp:[::1]:0", "tcp:[::1]:0", "ws:[::1]:0"]
    async with running_server(tmp_path, listen=listen) as server:
        for v6 in (False, True) if ipv6_available() else (False,):
            u = await UdpUA.open(addr(server, "udp", v6))
            await u.send(options(u))
            r = await u.recv_response()
            assert r.status == 200 and "OPTIONS" in (r.header("allow") or "")
            t = await TcpUA.open(addr(server, "tcp", v6))
            await t.send(options(t))
            assert (await t.recv_response()).status == 200
            await t.close()
            async with WsUA.open(addr(server, "ws", v6)) as w:
                await w.send(options(w))
                r = await w.recv_response()
                assert r.status == 200
                assert r.top_via.transport == "WS"


async def test_options_over_tls_and_wss(tmp_path: Path) -> None:
    cert, key = make_self_signed(tmp_path)
    async with running_server(
        tmp_path, listen=["udp:127.0.0.1:0", "tls:127.0.0.1:0", "wss:127.0.0.1:0"], tls={"cert": str(cert), "key": str(key)}
    ) as server:
        ctx = client_context(cert)
        host, port = addr(server, "tls")
        stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=ctx, https_compatible=False)
        # the harness's TCP UA works on any stream
        ua = TcpUA(stream, ("127.0.0.1", 5061), transport="tls")
        await ua.send(request(ua, "OPTIONS", "sip:example.com"))
        r = await ua.recv_response()
        assert r.status == 200
        await ua.send(b"\r\n\r\n")  # OB-EP-14 over TLS
        with trio.fail_after(3):
            assert await stream.receive_some(100) == b"\r\n"
        await ua.close()
        whost, wport = addr(server, "wss")
        async with trio_websocket.open_websocket(whost, wport, "/", use_ssl=ctx, subprotocols=["sip"]) as ws:
            await ws.send_message(
                "OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/WSS abc.invalid;branch=z9hG4bKwss1\r\n"
                "Max-Forwards: 70\r\nTo: <sip:example.com>\r\nFrom: <sip:a@example.com>;tag=1\r\n"
                "Call-ID: wss1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            )
            resp = parse_message((await ws.get_message()).encode())
            assert isinstance(resp, Response) and resp.status == 200
            assert resp.top_via.received == "127.0.0.1"  # WS-06


async def test_crlf_ping_and_stun_through_the_server(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        t = await TcpUA.open(addr(server, "tcp"))
        await t.send(b"\r\n\r\n" + options(t).encode())  # OB-KA-01: ping + message in one write
        assert await t.recv_raw() == b"\r\n"
        assert (await t.recv_response()).status == 200
        u = await UdpUA.open(addr(server, "udp"))
        await u.send(binding_request())
        data = await u.recv_raw()
        assert parse_xor_mapped_address(data) == u.local  # OB-STUN-02
        async with WsUA.open(addr(server, "ws")) as w:
            await w.send("\r\n\r\n")
            assert await w.recv_raw() == b"\r\n"  # WS-07: never handed to the parser


async def test_malformed_message_gets_400_and_connection_stays_usable(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        t = await TcpUA.open(addr(server, "tcp"))
        bad = options(t).replace("From: ", "X-Was-From: ")  # no From header
        await t.send(bad)
        raw = await t.recv_raw()  # the 400 cannot carry a From: the request had none
        assert raw.startswith(b"SIP/2.0 400 ") and b"From" in raw.split(b"\r\n")[0]
        await t.send(options(t))
        assert (await t.recv_response()).status == 200
        async with WsUA.open(addr(server, "ws")) as w:
            await w.send(options(w).replace("CSeq: 1 OPTIONS", "CSeq: x OPTIONS"))
            raw = await w.recv_raw()
            assert raw.startswith(b"SIP/2.0 400 ") and b"CSeq" in raw.split(b"\r\n")[0]
            await w.send(options(w))
            assert (await w.recv_response()).status == 200  # the phone's connection survives
        u = await UdpUA.open(addr(server, "udp"))
        await u.send(options(u).replace("SIP/2.0\r\n", "SIP/7.0\r\n", 1))
        assert (await u.recv_response()).status == 505


async def test_oversized_message_gets_513(tmp_path: Path) -> None:
    async with running_server(tmp_path, limits={"max_message_size": 2000}) as server:
        u = await UdpUA.open(addr(server, "udp"))
        big = request(u, "MESSAGE", "sip:bob@example.com", body="x" * 3000)
        await u.send(big)
        assert (await u.recv_response()).status == 513
        t = await TcpUA.open(addr(server, "tcp"))
        await t.send(request(t, "MESSAGE", "sip:bob@example.com", body="y" * 3000))
        assert (await t.recv_response()).status == 513


async def test_unknown_method_to_server_is_501(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        u = await UdpUA.open(addr(server, "udp"))
        await u.send(request(u, "FROBNICATE", "sip:example.com"))
        r = await u.recv_response()
        assert r.status == 501 and "Allow" in str(r.to_bytes())


async def test_ws_handshake_without_sip_refused(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        host, port = addr(server, "ws")
        with pytest.raises(trio_websocket.HandshakeError):
            async with trio_websocket.open_websocket(host, port, "/", use_ssl=False, subprotocols=["chat"]):
                pass


def _sipserver() -> list[str]:
    exe = Path(sys.executable).parent / "sipserver"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sipserver"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _options_udp(port: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(
            b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKsub1;rport\r\n"
            b"Max-Forwards: 70\r\nTo: <sip:127.0.0.1>\r\nFrom: <sip:t@127.0.0.1>;tag=1\r\n"
            b"Call-ID: sub1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            ("127.0.0.1", port),
        )
        return s.recvfrom(65536)[0]


def _start(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [*_sipserver(), "run", "--listen", f"udp:127.0.0.1:{port}", "--listen", f"tcp:127.0.0.1:{port}",
         "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(proc.communicate()[0].decode())


def test_installed_server_answers_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """`sipserver run --listen ...` as a subprocess: OPTIONS answered; SIGTERM -> exit 0, no traceback."""
    port = _free_port()
    proc = _start(tmp_path, port)
    try:
        assert _options_udp(port).startswith(b"SIP/2.0 200")
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=15)[0].decode()
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert "authentication is OFF" in out
    assert oct(os.stat(tmp_path / "data" / "flow-token.key").st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_udp_binding_survives_restart(tmp_path: Path, how: str) -> None:
    """Issue registrar: register over UDP, stop the server (SIGTERM, or SIGKILL right after the
    200 OK), start it again: the binding is still there with its remaining expiry."""
    port = _free_port()
    proc = _start(tmp_path, port)
    reg = (
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKr{n};rport\r\n"
        "Max-Forwards: 70\r\nTo: <sip:carol@127.0.0.1>\r\nFrom: <sip:carol@127.0.0.1>;tag=1\r\n"
        "Call-ID: restart-{how}\r\nCSeq: {n} REGISTER\r\n{contact}Content-Length: 0\r\n\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(reg.format(n=1, how=how, contact="Contact: <sip:carol@127.0.0.1:5999>;expires=600\r\n").encode(), ("127.0.0.1", port))
        assert s.recvfrom(65536)[0].startswith(b"SIP/2.0 200")
        proc.send_signal(getattr(signal, how))
        proc.communicate(timeout=15)
        proc = _start(tmp_path, port)
        try:
            s.sendto(reg.format(n=2, how=how, contact="").encode(), ("127.0.0.1", port))
            resp = parse_message(s.recvfrom(65536)[0])
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=15)
    assert isinstance(resp, Response) and resp.status == 200
    contacts = resp.contacts
    assert len(contacts) == 1 and contacts[0].uri_text == "sip:carol@127.0.0.1:5999"
    assert 500 < (contacts[0].expires or 0) <= 600


async def test_udp_requests_that_waited_too_long_get_503_retry_after(tmp_path: Path) -> None:
    """Overload control (limits.overload_queue_delay, RFC 3261 §21.5.4): once requests have sat
    in the socket queue longer than the limit for at least the limit's length of time, a new
    UDP request is answered 503 with Retry-After instead of being handled; one stall alone
    sheds nothing; a retransmission of a request already answered still gets its answer, and
    once the queue is short again requests are handled as usual."""
    from harness import register

    limits = {"overload_queue_delay": 0.1, "overload_retry_after": 7}
    async with running_server(tmp_path, listen=["udp:127.0.0.1:0"], limits=limits) as server:
        u = await UdpUA.open(addr(server, "udp"))
        done = register(u, "carol")
        await u.send(done)
        assert (await u.recv_response()).status == 200
        # Linux turns receive timestamps on lazily (deferred work) when the first socket asks
        # for them, which in a test run may be this server's, a moment ago.
        await trio.sleep(0.2)

        # One stall: the request queued behind it is late, and still handled.
        first = register(u, "bob")
        with socket.socket(fileno=os.dup(u.sock.fileno())) as same_port:
            same_port.sendto(first.encode(), u.server)
        time.sleep(0.3)
        assert (await u.recv_response()).status == 200

        # The delay persists (a second stall right after): now new requests are shed.
        late = register(u, "alice")
        # Sent without yielding to trio (so the server cannot read them yet), from the UA's port.
        with socket.socket(fileno=os.dup(u.sock.fileno())) as same_port:
            same_port.sendto(late.encode(), u.server)
            same_port.sendto(done.encode(), u.server)  # a retransmission of the answered one
        time.sleep(0.3)  # the event loop is stuck: both wait in the kernel's queue
        shed = await u.recv_response()
        assert shed.status == 503 and shed.header("retry-after") == "7"
        assert shed.call_id == parse_message(late.encode()).call_id
        again = await u.recv_response()
        assert again.status == 200  # answered from its transaction, never refused
        assert server.store.lookup("alice@example.com", time.time()) == []
        assert server.stats.get("overload_rejected") == 1

        # The client retries once the queue is short: handled. (The stall also held the event
        # loop 0.3 s; the lag probe reads it until its next 10 ms wake finds the loop free.)
        await trio.sleep(0.05)
        await u.send(late)
        assert (await u.recv_response()).status == 200
        assert len(server.store.lookup("alice@example.com", time.time())) == 1
        await u.close()


async def test_overload_control_off_handles_late_requests(tmp_path: Path) -> None:
    from harness import register

    limits = {"overload_queue_delay": 0}
    async with running_server(tmp_path, listen=["udp:127.0.0.1:0"], limits=limits) as server:
        u = await UdpUA.open(addr(server, "udp"))
        with socket.socket(fileno=os.dup(u.sock.fileno())) as same_port:
            same_port.sendto(register(u, "dave").encode(), u.server)
        time.sleep(0.3)
        assert (await u.recv_response()).status == 200
        assert server.stats.get("overload_rejected") is None
        await u.close()
