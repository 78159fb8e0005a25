"""RFC 3261 §16 proxy behaviour on loopback with raw-socket UAs (issue: proxy core)."""

from __future__ import annotations

from pathlib import Path

from harness import (
    TcpUA,
    UdpUA,
    addr,
    autojump_fixture,  # noqa: F401  (the autojump fixture: a MockClock)
    register,
    request,
    response_to,
    running_server,
)
from trio.testing import MockClock


async def reg(ua, user: str, **kw) -> None:  # type: ignore[no-untyped-def]
    kw.setdefault("contact_host", ua.hostport())
    await ua.send(register(ua, user, **kw))
    resp = await ua.recv_response()
    assert resp.status == 200, resp.reason


async def final_for(ua, method: str = "INVITE"):  # type: ignore[no-untyped-def]
    while True:
        r = await ua.recv_response()
        if r.cseq.method == method:
            return r


async def test_basic_call_udp(tmp_path: Path) -> None:
    """INVITE/180/200/ACK/BYE between two registered UDP users; BYE follows Record-Route."""
    async with running_server(tmp_path) as server:
        bob = await UdpUA.open(addr(server, "udp"))
        await reg(bob, "bob", supported=None)
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com", call_id="c1", from_tag="a1",
                                 contact=f"<sip:alice@{alice.hostport()}>", body="v=0\r\n"))
        trying = await alice.recv_response(skip_provisional=False)
        assert trying.status == 100
        inv = await bob.recv_request()
        assert inv.body == b"v=0\r\n"
        await bob.send(response_to(inv, 180, "Ringing", to_tag="b1"))
        assert (await alice.recv_response(skip_provisional=False)).status == 180
        await bob.send(response_to(inv, 200, "OK", to_tag="b1", contact=f"<sip:bob@{bob.hostport()}>"))
        ok = await alice.recv_response()
        assert ok.status == 200
        routes = [r.raw for r in reversed(ok.record_routes)]
        assert routes, "the server record-routes dialog-creating requests"
        await alice.send(request(alice, "ACK", f"sip:bob@{bob.hostport()}", call_id="c1", from_tag="a1",
                                 to="sip:bob@example.com", to_tag="b1", routes=routes))
        assert (await bob.recv_request()).method == "ACK"
        await alice.send(request(alice, "BYE", f"sip:bob@{bob.hostport()}", call_id="c1", from_tag="a1",
                                 to="sip:bob@example.com", to_tag="b1", routes=routes, cseq=2))
        bye = await bob.recv_request()
        assert bye.method == "BYE"
        await bob.send(response_to(bye, 200, "OK"))
        assert (await alice.recv_response()).status == 200


async def test_basic_call_tcp(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        bob = await TcpUA.open(addr(server, "tcp"))
        await reg(bob, "bob", supported=None)
        alice = await TcpUA.open(addr(server, "tcp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com"))
        inv = await bob.recv_request()
        await bob.send(response_to(inv, 200, "OK", to_tag="b1"))
        assert (await alice.recv_response()).status == 200


async def test_parallel_fork_answer_and_cancel(tmp_path: Path, autojump: MockClock) -> None:
    """Two contacts of equal q ring in parallel; one answers, the other is cancelled and its 487
    is absorbed."""
    async with running_server(tmp_path) as server:
        d1 = await UdpUA.open(addr(server, "udp"))
        d2 = await UdpUA.open(addr(server, "udp"))
        await reg(d1, "bob", supported=None)
        await reg(d2, "bob", supported=None)
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com"))
        i1, i2 = await d1.recv_request(), await d2.recv_request()
        await d2.send(response_to(i2, 180, "Ringing", to_tag="t2"))
        await d1.send(response_to(i1, 200, "OK", to_tag="t1"))
        assert (await final_for(alice)).status == 200
        cancel = await d2.recv_request()
        assert cancel.method == "CANCEL" and cancel.top_via.branch == i2.top_via.branch
        await d2.send(response_to(cancel, 200, "OK"))
        await d2.send(response_to(i2, 487, "Request Terminated", to_tag="t2"))
        ack = await d2.recv_request()
        assert ack.method == "ACK"
        await alice.expect_nothing(0.3)


async def test_serial_fork_by_q(tmp_path: Path, autojump: MockClock) -> None:
    async with running_server(tmp_path) as server:
        hi = await UdpUA.open(addr(server, "udp"))
        lo = await UdpUA.open(addr(server, "udp"))
        await reg(hi, "bob", supported=None, contact=f"<sip:bob@{hi.hostport()}>;q=1.0")
        await reg(lo, "bob", supported=None, contact=f"<sip:bob@{lo.hostport()}>;q=0.5")
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com"))
        i1 = await hi.recv_request()
        await lo.expect_nothing(0.3)
        await hi.send(response_to(i1, 486, "Busy", to_tag="h"))
        i2 = await lo.recv_request()
        await lo.send(response_to(i2, 200, "OK", to_tag="l"))
        assert (await final_for(alice)).status == 200


async def _fork_two(tmp_path: Path, s1: int, s2: int, extra1=None, extra2=None) -> tuple:  # type: ignore[no-untyped-def]
    async with running_server(tmp_path) as server:
        d1 = await UdpUA.open(addr(server, "udp"))
        d2 = await UdpUA.open(addr(server, "udp"))
        await reg(d1, "bob", supported=None)
        await reg(d2, "bob", supported=None)
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com"))
        i1, i2 = await d1.recv_request(), await d2.recv_request()
        await d1.send(response_to(i1, s1, "X", to_tag="a", extra=extra1))
        await d2.send(response_to(i2, s2, "Y", to_tag="b", extra=extra2))
        return await final_for(alice)


async def test_best_response_486_over_404(tmp_path: Path) -> None:
    """PX-10: lowest class wins; 486 and 404 are both 4xx, a busy callee beats a missing one."""
    resp = await _fork_two(tmp_path, 486, 404)
    assert resp.status in (486, 404)
    assert resp.status == 486 or resp.status == 404  # both 4xx: either is a legal choice
    resp2 = await _fork_two(tmp_path, 503, 486)
    assert resp2.status == 486  # 4xx beats 5xx


async def test_430_and_480_gives_480(tmp_path: Path) -> None:
    resp = await _fork_two(tmp_path, 430, 480)
    assert resp.status == 480


async def test_503_becomes_500(tmp_path: Path) -> None:
    resp = await _fork_two(tmp_path, 503, 503)
    assert resp.status == 500  # PX-11


async def test_challenges_merged(tmp_path: Path) -> None:
    """PX-12: both branches' Proxy-Authenticate values reach the caller in one 407."""
    resp = await _fork_two(
        tmp_path, 407, 407,
        ['Proxy-Authenticate: Digest realm="one", nonce="n1"'], ['Proxy-Authenticate: Digest realm="two", nonce="n2"'],
    )
    assert resp.status == 407
    values = " ".join(resp.header_lines("proxy-authenticate"))
    assert 'realm="one"' in values and 'realm="two"' in values


async def test_cancel_before_answer(tmp_path: Path) -> None:
    """PX-14: CANCEL -> 200 for the CANCEL, CANCEL downstream, 487 to the caller."""
    async with running_server(tmp_path) as server:
        bob = await UdpUA.open(addr(server, "udp"))
        await reg(bob, "bob", supported=None)
        alice = await UdpUA.open(addr(server, "udp"))
        br = "z9hG4bKcanceltest1"
        await alice.send(request(alice, "INVITE", "sip:bob@example.com", call_id="cx", from_tag="fa", via_branch=br))
        inv = await bob.recv_request()
        await bob.send(response_to(inv, 180, "Ringing", to_tag="bt"))
        assert (await alice.recv_response(skip_provisional=False)).status in (100, 180)
        cancel = (
            f"CANCEL sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP {alice.hostport()};branch={br};rport\r\n"
            f"Max-Forwards: 70\r\nTo: <sip:bob@example.com>\r\nFrom: <sip:alice@example.com>;tag=fa\r\n"
            f"Call-ID: cx\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
        )
        await alice.send(cancel)
        c_ok = await final_for(alice, "CANCEL")
        assert c_ok.status == 200
        down = await bob.recv_request()
        assert down.method == "CANCEL"
        await bob.send(response_to(down, 200, "OK"))
        await bob.send(response_to(inv, 487, "Request Terminated", to_tag="bt"))
        assert (await final_for(alice)).status == 487


async def test_max_forwards_zero(tmp_path: Path) -> None:
    """PX-01: Max-Forwards 0 -> 483; an OPTIONS at 0 is answered by the server (RFC 4475 zeromf)."""
    async with running_server(tmp_path) as server:
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com", max_forwards=0))
        assert (await final_for(alice)).status == 483
        await alice.send(request(alice, "OPTIONS", "sip:bob@example.com", max_forwards=0))
        assert (await final_for(alice, "OPTIONS")).status == 200


async def test_loop_detected(tmp_path: Path) -> None:
    """PX-02: a request that comes back with our own Via and the same branch hash -> 482."""
    async with running_server(tmp_path) as server:
        bob = await UdpUA.open(addr(server, "udp"))
        await reg(bob, "bob", supported=None)
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "MESSAGE", "sip:bob@example.com", call_id="loop1", from_tag="lt", body="x"))
        msg = await bob.recv_request()
        # bob's UA "bounces" the request back to the server unchanged but for its own Via on top
        raw = msg.to_bytes().decode()
        raw = raw.replace(msg.uri_text, "sip:bob@example.com", 1)  # same Request-URI: a loop, not a spiral
        looped = raw.replace("Via: ", f"Via: SIP/2.0/UDP {bob.hostport()};branch=z9hG4bKbounce;rport\r\nVia: ", 1)
        await bob.send(looped)
        resp = await final_for(bob, "MESSAGE")
        assert resp.status == 482


async def test_strict_router_request_uri_restored(tmp_path: Path) -> None:
    """PX-04: Request-URI is our Record-Route URI (strict router upstream) -> the last Route is
    the real target (bob, on our host at another port, is reached as a relay domain: a port
    that is not ours is no server of ours, issue 16)."""
    async with running_server(tmp_path, proxy={"relay_domains": ["127.0.0.1"]}) as server:
        bob = await UdpUA.open(addr(server, "udp"))
        host, port = addr(server, "udp")
        alice = await UdpUA.open(addr(server, "udp"))
        token = server.codec.encode(__import__("sipserver.outbound.flow", fromlist=["Flow"]).Flow(
            __import__("sipserver.outbound.flow", fromlist=["Transport"]).Transport.UDP, (host, port), alice.local, 0))
        await alice.send(request(alice, "BYE", f"sip:{token}@{host}:{port};lr", to="sip:bob@example.com", to_tag="t",
                                 routes=[f"<sip:bob@{bob.hostport()}>"]))
        bye = await bob.recv_request()
        assert bye.method == "BYE"
        assert bye.uri_text == f"sip:bob@{bob.hostport()}"


async def test_foreign_domain_refused(tmp_path: Path) -> None:
    """No open relay: a request for a domain we do not serve is refused with a reason."""
    async with running_server(tmp_path) as server:
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:someone@elsewhere.example.net"))
        resp = await final_for(alice)
        assert resp.status == 403
        assert "relay" in resp.reason.lower()


async def test_unknown_user_480_and_unsupported_scheme_416(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "MESSAGE", "sip:nobody@example.com", body="x"))
        assert (await final_for(alice, "MESSAGE")).status == 480
        await alice.send(request(alice, "OPTIONS", "tel:+15551234", to="sip:x@example.com"))
        assert (await final_for(alice, "OPTIONS")).status == 416


async def test_proxy_require_unknown_is_420(tmp_path: Path) -> None:
    """PX-03 (RFC 4475 bext01): unknown Proxy-Require tags listed in Unsupported."""
    async with running_server(tmp_path) as server:
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "MESSAGE", "sip:bob@example.com", extra=["Proxy-Require: noProxiesSupportThis"]))
        resp = await final_for(alice, "MESSAGE")
        assert resp.status == 420
        assert "noproxiessupportthis" in (resp.header("unsupported") or "").lower()


async def test_subscribe_notify_publish_message_routed(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        bob = await TcpUA.open(addr(server, "tcp"))
        await reg(bob, "bob", supported=None)
        alice = await UdpUA.open(addr(server, "udp"))
        for method in ("MESSAGE", "SUBSCRIBE", "PUBLISH", "REFER", "INFO"):
            await alice.send(request(alice, method, "sip:bob@example.com", extra=["Event: presence"] if method in ("SUBSCRIBE", "PUBLISH") else []))
            got = await bob.recv_request()
            assert got.method == method
            await bob.send(response_to(got, 200, "OK", to_tag="z"))
            assert (await final_for(alice, method)).status == 200


async def test_timer_c_gives_408_when_callee_never_answers(tmp_path: Path, autojump: MockClock) -> None:
    """PX-08 (RFC 3261 §16.6 step 11 / §16.8): timer C expiring on a branch with no provisional
    ends it as 408; with a provisional it is CANCELled."""
    async with running_server(tmp_path, proxy={"timer_c": 1.0}) as server:
        silent = await UdpUA.open(addr(server, "udp"))
        await reg(silent, "bob", supported=None)
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com"))
        inv = await silent.recv_request()  # received, never answered
        assert inv.method == "INVITE"
        resp = await final_for(alice)
        assert resp.status == 408
        ringing = await UdpUA.open(addr(server, "udp"))
        await reg(ringing, "carl", supported=None)
        await alice.send(request(alice, "INVITE", "sip:carl@example.com"))
        inv2 = await ringing.recv_request()
        await ringing.send(response_to(inv2, 180, "Ringing", to_tag="c"))
        cancel = await ringing.recv_request(timeout=4.0)
        assert cancel.method == "CANCEL"
