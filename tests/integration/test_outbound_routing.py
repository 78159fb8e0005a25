"""RFC 5626 routing through the single server: flows, tokens, failover (issue: outbound routing).

Phones here register Contacts naming private, unreachable addresses (a fake NAT), so a request can
only reach them through the flow they opened."""

from __future__ import annotations

from pathlib import Path

import trio
from harness import (
    TcpUA,
    UdpUA,
    WsUA,
    addr,
    autojump_fixture,  # noqa: F401  (the autojump fixture: a MockClock)
    register,
    request,
    response_to,
    running_server,
)
from trio.testing import MockClock

from sipserver.sip import Request, SipURI

INST_A = "urn:uuid:00000000-0000-1000-8000-0000000000aa"
INST_B = "urn:uuid:00000000-0000-1000-8000-0000000000bb"
NAT = "10.255.0.7:5060"  # a Contact address nobody listens on


async def reg_ok(ua, user: str, **kw) -> None:  # type: ignore[no-untyped-def]
    await ua.send(register(ua, user, contact_host=kw.pop("contact_host", NAT), **kw))
    resp = await ua.recv_response()
    assert resp.status == 200, f"{resp.status} {resp.reason}"


async def answer(ua, req: Request, status: int, tag: str = "t1", **kw) -> None:  # type: ignore[no-untyped-def]
    await ua.send(response_to(req, status, "X", to_tag=tag, **kw))


async def test_invite_reaches_phone_only_through_its_flow(tmp_path: Path) -> None:
    """OB-AP-05, OB-CS-04: Contact unreachable; INVITE arrives on the registered TCP flow, with
    Request-URI = registered Contact, one new Via, Max-Forwards decremented, no Route of ours."""
    async with running_server(tmp_path) as server:
        bob = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(bob, "bob", instance=INST_B, reg_id=1)
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com", max_forwards=70))
        inv = await bob.recv_request()
        assert inv.uri_text == f"sip:bob@{NAT};transport=tcp;ob"
        assert len(inv.vias) == 2
        assert inv.max_forwards == 69
        assert not inv.routes
        # OB-EP-10/OB-CS-06: two Record-Routes of ours, the top one naming bob's flow with ;ob
        top, second = inv.record_routes[:2]
        assert isinstance(top.uri, SipURI) and top.uri.user and top.uri.has_param("lr")
        assert top.uri.has_param("ob")
        assert server.codec.decode(top.uri.user).remote == bob.local
        assert isinstance(second.uri, SipURI) and server.codec.decode(second.uri.user).remote == alice.local


async def test_two_flows_of_one_instance_flow1_then_failover_on_close(
    tmp_path: Path, autojump: MockClock
) -> None:
    """OB-AP-01/04: reg-id 1 and 2 -> INVITE on flow 1 only; OB-AP-02/OB-REG-16: flow 1 closed ->
    the next INVITE goes to flow 2 and flow 1's binding is gone."""
    async with running_server(tmp_path) as server:
        f1 = await TcpUA.open(addr(server, "tcp"))
        f2 = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(f1, "bob", instance=INST_B, reg_id=1, call_id="bob-reg")
        await reg_ok(f2, "bob", instance=INST_B, reg_id=2, call_id="bob-reg", cseq=2)
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "MESSAGE", "sip:bob@example.com", body="hi"))
        msg = await f1.recv_request()
        assert msg.method == "MESSAGE"
        await f2.expect_nothing(0.3)
        await answer(f1, msg, 200)
        assert (await alice.recv_response()).status == 200
        await f1.close()
        await trio.sleep(0.2)
        assert [b.reg_id for b in server.store.lookup("bob@example.com", server.clock.wall())] == [2]
        await alice.send(request(alice, "MESSAGE", "sip:bob@example.com", body="again"))
        msg2 = await f2.recv_request()
        await answer(f2, msg2, 200)
        assert (await alice.recv_response()).status == 200


async def test_430_fails_over_to_next_flow_and_removes_binding(tmp_path: Path) -> None:
    """OB-AP-02, OB-CS-07: flow 1 answers 430 -> the INVITE is retried on flow 2 at once, the
    caller never sees 430, and the reg-id 1 binding is removed."""
    async with running_server(tmp_path) as server:
        f1 = await TcpUA.open(addr(server, "tcp"))
        f2 = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(f1, "bob", instance=INST_B, reg_id=1, call_id="b")
        await reg_ok(f2, "bob", instance=INST_B, reg_id=2, call_id="b", cseq=2)
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com", body="v=0\r\n"))
        inv1 = await f1.recv_request()
        t0 = trio.current_time()
        await answer(f1, inv1, 430)
        inv2 = await f2.recv_request()
        assert trio.current_time() - t0 < 0.5
        assert inv2.method == "INVITE"
        ack = await f1.recv_request()  # the ACK for the 430, hop by hop
        assert ack.method == "ACK"
        await answer(f2, inv2, 486)
        final = await alice.recv_response()
        assert final.status == 486
        assert [b.reg_id for b in server.store.lookup("bob@example.com", server.clock.wall())] == [2]


async def test_all_flows_dead_gives_480_not_430(tmp_path: Path) -> None:
    """OB-AP-06, OB-CS-07: the only flow answers 430 -> the caller gets 480."""
    async with running_server(tmp_path) as server:
        f1 = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(f1, "bob", instance=INST_B, reg_id=1)
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com"))
        inv = await f1.recv_request()
        await answer(f1, inv, 430)
        final = await alice.recv_response()
        assert final.status == 480


async def test_486_on_flow1_does_not_try_flow2(tmp_path: Path, autojump: MockClock) -> None:
    """OB-AP-03: a real answer ends the instance's branch."""
    async with running_server(tmp_path) as server:
        f1 = await TcpUA.open(addr(server, "tcp"))
        f2 = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(f1, "bob", instance=INST_B, reg_id=1, call_id="c")
        await reg_ok(f2, "bob", instance=INST_B, reg_id=2, call_id="c", cseq=2)
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com"))
        inv = await f1.recv_request()
        await answer(f1, inv, 486)
        assert (await alice.recv_response()).status == 486
        await f2.expect_nothing(0.3)


async def test_two_instances_ring_in_parallel(tmp_path: Path) -> None:
    """One branch per instance: two devices of one AoR both get the INVITE."""
    async with running_server(tmp_path) as server:
        d1 = await TcpUA.open(addr(server, "tcp"))
        d2 = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(d1, "bob", instance=INST_A, reg_id=1)
        await reg_ok(d2, "bob", instance=INST_B, reg_id=1)
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com"))
        i1 = await d1.recv_request()
        i2 = await d2.recv_request()
        assert i1.top_via.branch != i2.top_via.branch
        assert i1.record_routes[0].raw != i2.record_routes[0].raw  # each branch its own RR
        await answer(d2, i2, 180, tag="d2")
        await answer(d1, i1, 200, tag="d1")
        ok = await alice.recv_response()
        assert ok.status == 200
        cancel = await d2.recv_request()  # RFC 3261 §16.7 step 10: the other branch is cancelled
        assert cancel.method == "CANCEL"


async def test_tampered_token_in_route_is_403(tmp_path: Path, autojump: MockClock) -> None:
    """OB-EP-07: a forged flow token is refused and nothing is sent on any flow."""
    async with running_server(tmp_path) as server:
        bob = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(bob, "bob", instance=INST_B, reg_id=1)
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com"))
        inv = await bob.recv_request()
        token = inv.record_routes[0].sip_uri.user
        assert token
        forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
        host, port = addr(server, "udp")
        await alice.send(
            request(alice, "BYE", f"sip:bob@{NAT}", to_tag="x", routes=[f"<sip:{forged}@{host}:{port};lr;ob>"])
        )
        resp = await alice.recv_response()
        assert resp.status == 403
        await bob.expect_nothing(0.3)


async def test_token_of_closed_flow_is_430(tmp_path: Path) -> None:
    """OB-EP-08: a valid token whose flow is gone -> 430."""
    async with running_server(tmp_path) as server:
        bob = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(bob, "bob", instance=INST_B, reg_id=1)
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com"))
        inv = await bob.recv_request()
        rr = inv.record_routes[0].raw
        await bob.close()
        # OB-AP-06: the pending INVITE's only flow died -> the caller gets 480 at once, not 430
        final = await alice.recv_response()
        assert final.status == 480 and final.cseq.method == "INVITE"
        await alice.send(request(alice, "BYE", f"sip:bob@{NAT}", to_tag="x", routes=[rr]))
        resp = await alice.recv_response()
        assert resp.status == 430


async def _establish(server, caller, callee, callee_user: str = "bob", callee_contact: str | None = None):  # type: ignore[no-untyped-def]
    await caller.send(request(caller, "INVITE", f"sip:{callee_user}@example.com", from_user="alice",
                              contact=f"<sip:alice@{caller.hostport()};ob>", call_id="dlg-1", from_tag="atag"))
    inv = await callee.recv_request()
    await callee.send(response_to(inv, 200, "OK", to_tag="btag", contact=callee_contact or f"<sip:{callee_user}@{NAT};ob>"))
    ok = await caller.recv_response()
    assert ok.status == 200
    return inv, ok


async def test_dialog_both_directions_ws_caller_udp_callee(tmp_path: Path) -> None:
    """OB-CS-05/06, WS-10: a WebSocket phone calls a UDP phone; ACK and BYE work both ways, each
    leg's Route naming its own flow."""
    async with running_server(tmp_path) as server:
        bob = await UdpUA.open(addr(server, "udp"))
        await reg_ok(bob, "bob", contact_host=bob.hostport())
        async with WsUA.open(addr(server, "ws")) as alice:
            await reg_ok(alice, "alice", instance=INST_A, reg_id=1, contact_host="df7jal23ls0d.invalid")
            inv, ok = await _establish(server, alice, bob, callee_contact=f"<sip:bob@{bob.hostport()}>")
            # caller's route set = reversed Record-Route
            routes = [r.raw for r in reversed(ok.record_routes)]
            await alice.send(request(alice, "ACK", str(ok.contacts[0].uri), call_id="dlg-1", from_tag="atag",
                                     to="sip:bob@example.com", to_tag="btag", routes=routes))
            ack = await bob.recv_request()
            assert ack.method == "ACK"
            # callee -> caller BYE goes down alice's WebSocket
            bob_routes = [r.raw for r in inv.record_routes]
            await bob.send(
                request(bob, "BYE", "sip:alice@df7jal23ls0d.invalid;transport=ws;ob", from_user="bob", call_id="dlg-1",
                        from_tag="btag", to="sip:alice@example.com", to_tag="atag", routes=bob_routes, cseq=2)
            )
            bye = await alice.recv_request()
            assert bye.method == "BYE"
            assert not bye.routes
            await alice.send(response_to(bye, 200, "OK"))
            assert (await bob.recv_response()).status == 200


async def test_bye_from_callee_goes_down_callers_tcp_flow(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        bob = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(bob, "bob", instance=INST_B, reg_id=1)
        alice = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(alice, "alice", instance=INST_A, reg_id=1)
        inv, ok = await _establish(server, alice, bob)
        await bob.send(
            request(bob, "BYE", f"sip:alice@{NAT};transport=tcp;ob", from_user="bob", call_id="dlg-1", from_tag="btag",
                    to="sip:alice@example.com", to_tag="atag", routes=[r.raw for r in inv.record_routes], cseq=5)
        )
        bye = await alice.recv_request()
        assert bye.method == "BYE" and bye.call_id == "dlg-1"
        await alice.send(response_to(bye, 200, "OK"))
        assert (await bob.recv_response()).status == 200
        # and caller -> callee
        await alice.send(
            request(alice, "BYE", f"sip:bob@{NAT};transport=tcp;ob", call_id="dlg-1", from_tag="atag", to="sip:bob@example.com",
                    to_tag="btag", routes=[r.raw for r in reversed(ok.record_routes)], cseq=6)
        )
        bye2 = await bob.recv_request()
        assert bye2.method == "BYE"


async def test_no_contact_rewriting(tmp_path: Path) -> None:
    """The Contact a phone sends is the Contact the other side sees."""
    async with running_server(tmp_path) as server:
        bob = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(bob, "bob", instance=INST_B, reg_id=1)
        alice = await UdpUA.open(addr(server, "udp"))
        contact = "<sip:alice@192.168.55.3:5060;ob>"
        await alice.send(request(alice, "INVITE", "sip:bob@example.com", contact=contact))
        inv = await bob.recv_request()
        assert inv.header("contact") == contact
        await bob.send(response_to(inv, 200, "OK", to_tag="b", contact="<sip:bob@10.1.1.1:5060>"))
        ok = await alice.recv_response()
        assert ok.header("contact") == "<sip:bob@10.1.1.1:5060>"
