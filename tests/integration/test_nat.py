"""Issue 17 on loopback: phones without outbound are reached through the flow their REGISTER
opened (implicit flows), kept open by server-sent keepalive OPTIONS, and found again by dialog
requests; Flow-Timer depends on the transport. The real-NAT versions live in tests/nat/."""

from __future__ import annotations

from pathlib import Path

from harness import (
    UdpUA,
    addr,
    autojump_fixture,  # noqa: F401  (the autojump fixture: a MockClock)
    register,
    request,
    response_to,
    running_server,
)
from trio.testing import MockClock

from sipserver.sip import Request

# A private address nobody listens on: a request sent to the Contact would be lost.
PRIVATE = "192.0.2.77:5060"


async def reg_plain(ua: UdpUA, user: str, **kw: object) -> None:
    """A desk phone without outbound: private Contact, no ;ob, no reg-id."""
    await ua.send(register(ua, user, contact=f"<sip:{user}@{PRIVATE}>", supported=None, **kw))  # type: ignore[arg-type]
    resp = await ua.recv_response()
    assert resp.status == 200, resp.reason


async def test_invite_reaches_udp_phone_without_outbound_at_its_source_address(tmp_path: Path) -> None:
    """Implicit flow: the INVITE goes to the source address of the REGISTER, with the stored
    (private) Contact as Request-URI - the Contact is never rewritten."""
    async with running_server(tmp_path, nat={"keepalive": False}) as server:
        bob = await UdpUA.open(addr(server, "udp"))
        await reg_plain(bob, "bob")
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com", from_user="alice", domain="example.com"))
        inv = await bob.recv_request()
        assert inv.method == "INVITE" and inv.uri_text == f"sip:bob@{PRIVATE}"


async def test_callee_bye_reaches_natted_udp_caller_down_its_flow(tmp_path: Path) -> None:
    """Record-Route towards a direct client carries its flow token, so the callee's BYE goes to
    the caller's source address, not to its private Contact."""
    async with running_server(tmp_path, nat={"keepalive": False}) as server:
        bob = await UdpUA.open(addr(server, "udp"))
        await reg_plain(bob, "bob")
        alice = await UdpUA.open(addr(server, "udp"))
        await reg_plain(alice, "alice")
        await alice.send(request(alice, "INVITE", "sip:bob@example.com", call_id="n1", from_tag="a1",
                                 contact=f"<sip:alice@{PRIVATE}>"))
        inv = await bob.recv_request()
        rr = inv.header_values("record-route")
        assert len(rr) == 2 and all("dlg=" in v for v in rr)
        ok = response_to(inv, 200, "OK", to_tag="b1", contact=f"<sip:bob@{PRIVATE}>")
        await bob.send(ok)
        while (r := await alice.recv_response()).status < 200:
            pass
        assert r.status == 200
        # bob's BYE: Route set = Record-Route as received; Request-URI = alice's private Contact
        bye = request(bob, "BYE", f"sip:alice@{PRIVATE}", call_id="n1", from_user="bob", from_tag="b1",
                      to="sip:alice@example.com", to_tag="a1", cseq=2, routes=rr)
        await bob.send(bye)
        got = await alice.recv_request()
        assert got.method == "BYE" and got.uri_text == f"sip:alice@{PRIVATE}"


async def test_a_token_without_a_valid_dialog_proof_is_not_in_dialog(tmp_path: Path) -> None:
    """Issue 16: a valid flow token of bob's flow with a made-up To tag and no (or a forged)
    dialog proof is an out-of-dialog request; from a local user it is challenged, and bob's
    phone hears nothing (a NOTIFY "from alice" with Event: check-sync reboots some phones)."""
    users = {"alice": {"password": "a"}, "bob": {"password": "b"}}
    async with running_server(tmp_path, users=users, auth={"realm": "example.com"}, nat={"keepalive": False}) as server:
        bob = await UdpUA.open(addr(server, "udp"))
        await bob.send("\r\n\r\n")  # a keepalive opens bob's UDP flow; its token names it
        await bob.expect_nothing(0.2)
        flow = next(fi.flow for fi in server.flows.snapshot() if fi.flow.remote[1] == bob.local[1])
        token = server.codec.encode(flow)
        host, port = addr(server, "udp")
        alice = await UdpUA.open(addr(server, "udp"))
        for dlg in ("", ";dlg=AAAAAAAAAAAAAAAAAAAAAA"):
            await alice.send(request(alice, "NOTIFY", f"sip:bob@{PRIVATE}", from_user="alice", to_tag="made-up",
                                     routes=[f"<sip:{token}@{host}:{port};lr{dlg}>"], extra=["Event: check-sync"]))
            assert (await alice.recv_response()).status == 407
        await bob.expect_nothing(0.3)


async def test_keepalive_options_keep_binding_and_silence_kills_it(tmp_path: Path, autojump: MockClock) -> None:
    """Server-sent keepalives (nat.keepalive_interval): any response keeps the binding; after
    nat.keepalive_failures unanswered pings the flow is dead and its binding is removed."""
    nat = {"keepalive": True, "keepalive_interval": 2.0, "keepalive_failures": 2}
    async with running_server(tmp_path, nat=nat) as server:
        bob = await UdpUA.open(addr(server, "udp"))
        await reg_plain(bob, "bob")
        for _ in range(3):
            ping = await bob.recv_request(timeout=5)
            assert ping.method == "OPTIONS" and ping.uri_text == f"sip:bob@{PRIVATE}"
            await bob.send(response_to(ping, 404, "Not Found"))  # any status means alive
        assert server.store.lookup("bob@example.com", server.clock.wall())
        # silence: two unanswered pings, then the binding goes
        for _ in range(2):
            assert (await bob.recv_request(timeout=5)).method == "OPTIONS"
        alice = await UdpUA.open(addr(server, "udp"))
        for _ in range(50):
            if not server.store.lookup("bob@example.com", server.clock.wall()):
                break
            await bob.expect_nothing(0.5)
        assert not server.store.lookup("bob@example.com", server.clock.wall())
        assert server.stats.get("nat_keepalive_failures") == 1
        await alice.send(request(alice, "MESSAGE", "sip:bob@example.com", from_user="carol", domain="example.com"))
        assert (await alice.recv_response()).status == 480


async def test_flow_timer_is_25_on_udp_and_120_on_tcp(tmp_path: Path) -> None:
    """RFC 5626 §4.4.1: the Flow-Timer must keep a UDP NAT mapping alive (registrar.flow_timer_udp)."""
    from harness import TcpUA

    async with running_server(tmp_path) as server:
        u = await UdpUA.open(addr(server, "udp"))
        await u.send(register(u, "bob", instance="urn:uuid:1", reg_id=1))
        assert (await u.recv_response()).header("Flow-Timer") == "25"
        t = await TcpUA.open(addr(server, "tcp"))
        await t.send(register(t, "bob", instance="urn:uuid:2", reg_id=1))
        assert (await t.recv_response()).header("Flow-Timer") == "120"


async def test_listener_advertise_writes_the_public_address_everywhere(tmp_path: Path) -> None:
    """A server behind a 1:1 NAT (issue 17): with ``;advertise=`` on its listeners, every Via,
    Record-Route and Path it writes carries the public address, on UDP, TCP and WS; a Route to
    the public address is recognised as ours."""
    from harness import TcpUA

    listen = [
        "udp:127.0.0.1:0;advertise=203.0.113.7:5070",
        "tcp:127.0.0.1:0;advertise=203.0.113.7:5071",
        "ws:127.0.0.1:0;advertise=203.0.113.7:5072",
    ]
    async with running_server(tmp_path, listen=listen, nat={"keepalive": False}) as server:
        bob = await TcpUA.open(addr(server, "tcp"))
        await bob.send(register(bob, "bob", instance="urn:uuid:b", reg_id=1))
        ok = await bob.recv_response()
        assert ok.status == 200
        assert "203.0.113.7:5071" in (ok.header("Path") or "") and "127.0.0.1" not in (ok.header("Path") or "")
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com", call_id="adv1", from_user="carol"))
        inv = await bob.recv_request()
        ours = [inv.header_lines("via")[0], *inv.header_values("record-route")]
        assert "203.0.113.7:5071" in ours[0]
        assert any("203.0.113.7:5070" in v for v in ours[1:]) and any("203.0.113.7:5071" in v for v in ours[1:])
        assert all("127.0.0.1" not in v for v in ours)
        trying = await alice.recv()
        assert trying.status == 100 and "203.0.113.7" not in str(trying.header_lines("via"))  # alice's own Via


async def test_connection_the_server_opened_is_named_by_its_listener(tmp_path: Path) -> None:
    """Issue 20 bug: a request forwarded over a TCP connection the server opened carried
    ``Record-Route: <sip:…@127.0.0.1:EPHEMERAL…>``, so the far end's BYE went nowhere. Our
    Via and Record-Route name the TCP listener instead."""
    import trio

    # the other proxy is reached through no flow of ours: it must be a relay domain (issue 16)
    async with running_server(tmp_path, nat={"keepalive": False}, proxy={"relay_domains": ["127.0.0.1"]}) as server:
        lst = await trio.open_tcp_listeners(0, host="127.0.0.1")
        edge_port = lst[0].socket.getsockname()[1]
        # bob registered through another proxy whose Path points at our TCP "edge" listener
        edge = await UdpUA.open(addr(server, "udp"))
        req = register(edge, "bob", contact="<sip:bob@192.0.2.50:5060>", supported="path",
                       extra=[f"Path: <sip:127.0.0.1:{edge_port};transport=tcp;lr>"])
        req = req.replace("Max-Forwards: 70", "Via: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKx1\r\nMax-Forwards: 70")
        await edge.send(req)
        assert (await edge.recv_response()).status == 200
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com", call_id="out1", from_user="carol"))
        with trio.fail_after(5):
            stream = await lst[0].accept()
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(65536)
        text = data.decode()
        tcp_port = addr(server, "tcp")[1]
        via = next(line for line in text.split("\r\n") if line.lower().startswith("via:"))
        rrs = [line for line in text.split("\r\n") if line.lower().startswith("record-route:")]
        assert f":{tcp_port}" in via and rrs and any(f":{tcp_port};" in r for r in rrs)
        await stream.aclose()
        await lst[0].aclose()


async def test_dialog_survives_a_websocket_reconnect_of_the_same_instance(tmp_path: Path) -> None:
    """Issue 17: a browser that loses its WebSocket mid-call and registers the same
    +sip.instance/reg-id on a new connection is reached in that dialog: the peer's re-INVITE
    and BYE, whose Route names the dead flow, go down the new flow (not 430). Another
    instance's new flow never gets them."""
    from harness import WsUA

    async with running_server(tmp_path, nat={"keepalive": False}) as server:
        ws_addr = addr(server, "ws")
        alice = await UdpUA.open(addr(server, "udp"))
        async with WsUA.open(ws_addr) as bob:
            await bob.send(register(bob, "bob", instance="urn:uuid:b0b", reg_id=1))
            assert (await bob.recv_response()).status == 200
            await alice.send(request(alice, "INVITE", "sip:bob@example.com", call_id="re1", from_tag="a1",
                                     from_user="carol", contact=f"<sip:carol@{alice.hostport()}>"))
            inv = await bob.recv_request()
            await bob.send(response_to(inv, 200, "OK", to_tag="b1", contact="<sip:bob@df7jal23ls0d.invalid;transport=ws>"))
            ok = await alice.recv_response()
            assert ok.status == 200
        route = list(reversed(ok.header_values("record-route")))
        async with WsUA.open(ws_addr) as other:  # another instance: must not receive bob's dialog
            await other.send(register(other, "bob", instance="urn:uuid:0ther", reg_id=1))
            assert (await other.recv_response()).status == 200
            await alice.send(request(alice, "INFO", "sip:bob@df7jal23ls0d.invalid;transport=ws", call_id="re1",
                                     from_tag="a1", from_user="carol", to="sip:bob@example.com", to_tag="b1",
                                     cseq=2, routes=route))
            assert (await alice.recv_response()).status == 430
            await other.expect_nothing(0.2)
            async with WsUA.open(ws_addr) as bob2:
                await bob2.send(register(bob2, "bob", instance="urn:uuid:b0b", reg_id=1))
                assert (await bob2.recv_response()).status == 200
                for n, method in ((3, "INVITE"), (4, "BYE")):
                    await alice.send(request(alice, method, "sip:bob@df7jal23ls0d.invalid;transport=ws",
                                             call_id="re1", from_tag="a1", from_user="carol",
                                             to="sip:bob@example.com", to_tag="b1", cseq=n, routes=route))
                    got = await bob2.recv_request()
                    assert got.method == method and got.call_id == "re1"
                    await bob2.send(response_to(got, 200, "OK"))
                    assert (await alice.recv_response()).status == 200
                await other.expect_nothing(0.2)


async def test_callee_bye_reaches_an_unregistered_udp_caller_whose_flow_was_forgotten(
    tmp_path: Path, autojump: MockClock
) -> None:
    """Issue 17, OB-CS-05 / OB-EP-09: a long call from a UDP caller that never registered. Its
    flow is forgotten after limits.idle_flow_timeout of silence, but a UDP 5-tuple stays valid
    as long as our socket exists: the callee's BYE, whose Route token names that flow, still
    reaches the caller's source address (it was 430 before). OB-EP-08: a UDP flow that failed
    (here: closed by the server; likewise a missed keep-alive) stays dead: 430."""
    import trio

    from sipserver.outbound.flow import CloseCause

    async with running_server(tmp_path, nat={"keepalive": False}, limits={"idle_flow_timeout": 5.0}) as server:
        bob = await UdpUA.open(addr(server, "udp"))
        await reg_plain(bob, "bob")
        alice = await UdpUA.open(addr(server, "udp"))  # never registers
        await alice.send(request(alice, "INVITE", "sip:bob@example.com", call_id="long1", from_tag="a1",
                                 contact=f"<sip:alice@{PRIVATE}>"))
        inv = await bob.recv_request()
        rr = inv.header_values("record-route")
        await bob.send(response_to(inv, 200, "OK", to_tag="b1", contact=f"<sip:bob@{PRIVATE}>"))
        while (r := await alice.recv_response()).status < 200:
            pass
        assert r.status == 200

        def alice_flow_tracked() -> bool:
            return any(fi.remote[1] == alice.local[1] for fi in server.flows.snapshot())

        assert alice_flow_tracked()
        await trio.sleep(8.0)  # a long, silent call: past idle_flow_timeout (virtual time)
        assert not alice_flow_tracked()
        for cseq in (2, 3):
            bye = request(bob, "BYE", f"sip:alice@{PRIVATE}", call_id="long1", from_user="bob", from_tag="b1",
                          to="sip:alice@example.com", to_tag="a1", cseq=cseq, routes=rr)
            await bob.send(bye)
            got = await alice.recv_request()
            assert got.method == "BYE" and got.call_id == "long1" and got.uri_text == f"sip:alice@{PRIVATE}"
            await alice.send(response_to(got, 200, "OK"))
            assert (await bob.recv_response()).status == 200
            await trio.sleep(8.0)  # forgotten again after the BYE; the second one still gets there
        assert not alice_flow_tracked()
        await alice.send("\r\n\r\n")  # heard once more, then the flow fails
        await alice.expect_nothing(0.2)
        flow = next(fi.flow for fi in server.flows.snapshot() if fi.remote[1] == alice.local[1])
        server.flows.close(flow, CloseCause.CLOSED_BY_MANAGEMENT)
        await bob.send(request(bob, "BYE", f"sip:alice@{PRIVATE}", call_id="long1", from_user="bob", from_tag="b1",
                               to="sip:alice@example.com", to_tag="a1", cseq=4, routes=rr))
        assert (await bob.recv_response()).status == 430
        await alice.expect_nothing(0.3)


async def test_a_flow_whose_binding_is_gone_is_released(tmp_path: Path, autojump: MockClock) -> None:
    """Issue 17: a flow is kept only while a binding lives on it. A UDP phone without outbound
    that unregisters gets no more keepalive OPTIONS; a TCP phone without outbound whose binding
    expired has its connection closed after limits.idle_flow_timeout of silence, instead of
    being held open for good."""
    import pytest
    import trio
    from harness import TcpUA

    nat = {"keepalive": True, "keepalive_interval": 2.0}
    async with running_server(tmp_path, nat=nat, limits={"idle_flow_timeout": 5.0},
                              registrar={"min_expires": 10}) as server:
        bob = await UdpUA.open(addr(server, "udp"))
        await reg_plain(bob, "bob", call_id="rb", cseq=1)
        ping = await bob.recv_request(timeout=5)
        assert ping.method == "OPTIONS"
        await bob.send(response_to(ping, 200, "OK"))
        await bob.send(register(bob, "bob", contact=f"<sip:bob@{PRIVATE}>", supported=None, call_id="rb",
                                cseq=2, expires=0))
        while isinstance(r := await bob.recv(), Request):  # a ping may cross the un-REGISTER
            await bob.send(response_to(r, 200, "OK"))
        assert r.status == 200
        await bob.expect_nothing(3 * 2.0)  # no more pings once the binding is gone

        carol = await TcpUA.open(addr(server, "tcp"))
        await carol.send(register(carol, "carol", contact=f"<sip:carol@{PRIVATE};transport=tcp>", supported=None,
                                  expires=10))
        assert (await carol.recv_response()).status == 200
        await trio.sleep(8.0)  # bound: kept past idle_flow_timeout while the binding lives
        assert server.store.lookup("carol@example.com", server.clock.wall())
        with pytest.raises(EOFError):  # expired at 10 s; the connection then idles out
            await carol.recv_raw(timeout=30.0)
        assert not server.store.lookup("carol@example.com", server.clock.wall())
