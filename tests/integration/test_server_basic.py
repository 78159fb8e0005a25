"""End-to-end basics on loopback: OPTIONS, REGISTER, INVITE routed down the registered flow."""

from __future__ import annotations

from pathlib import Path

from harness import TcpUA, UdpUA, addr, register, request, response_to, running_server

INSTANCE = "urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF"


async def test_options_to_server_over_udp(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        ua = await UdpUA.open(addr(server, "udp"))
        await ua.send(request(ua, "OPTIONS", "sip:example.com"))
        resp = await ua.recv_response()
        assert resp.status == 200
        assert "outbound" in (resp.header("supported") or "")
        assert resp.top_via.received == "127.0.0.1"
        assert resp.top_via.rport == ua.local[1]


async def test_outbound_register_and_invite_over_tcp_flow(tmp_path: Path) -> None:
    """OB-CS-01, OB-REG-10, OB-CS-04: register over TCP, INVITE arrives on that connection."""
    async with running_server(tmp_path) as server:
        bob = await TcpUA.open(addr(server, "tcp"))
        await bob.send(register(bob, "bob", instance=INSTANCE, reg_id=1, contact_host="10.0.0.99:5060"))
        resp = await bob.recv_response()
        assert resp.status == 200, resp.reason
        assert "outbound" in resp.require
        assert resp.header("flow-timer") is not None
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com", contact="<sip:alice@127.0.0.1>", body="v=0\r\n"))
        inv = await bob.recv_request()
        assert inv.method == "INVITE"
        assert inv.uri_text.startswith("sip:bob@10.0.0.99:5060")
        rrs = inv.record_routes
        assert len(rrs) == 2
        await bob.send(response_to(inv, 180, "Ringing", to_tag="bobtag"))
        ringing = await alice.recv_response(skip_provisional=False)
        while ringing.status == 100:
            ringing = await alice.recv_response(skip_provisional=False)
        assert ringing.status == 180
        await bob.send(response_to(inv, 200, "OK", to_tag="bobtag", contact="<sip:bob@10.0.0.99:5060;transport=tcp;ob>"))
        ok = await alice.recv_response()
        assert ok.status == 200
        assert len(ok.record_routes) == 2
        await alice.close()
        await bob.close()
