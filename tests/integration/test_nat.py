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
    nat = {"keepalive_interval": 2.0, "keepalive_failures": 2}
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
