"""Registrar behaviour on the wire over UDP, TCP and WebSocket (issue: registrar)."""

from __future__ import annotations

from pathlib import Path

import trio
from harness import (
    TcpUA,
    UdpUA,
    WsUA,
    addr,
    autojump_fixture,  # noqa: F401  (the autojump fixture: a MockClock)
    branch,
    register,
    request,
    response_to,
    running_server,
)
from trio.testing import MockClock

INST = "urn:uuid:00000000-0000-1000-8000-00000000c0de"
INST2 = "urn:uuid:00000000-0000-1000-8000-00000000beef"


async def test_two_flows_reg_id_1_and_2_listed_with_instance_echoed(tmp_path: Path) -> None:
    """OB-REG-08, OB-REG-15: second flow's 200 OK lists both Contacts, +sip.instance byte-exact."""
    async with running_server(tmp_path) as server:
        c1 = await TcpUA.open(addr(server, "tcp"))
        c2 = await TcpUA.open(addr(server, "tcp"))
        await c1.send(register(c1, "erin", instance=INST, reg_id=1, call_id="e"))
        assert (await c1.recv_response()).status == 200
        await c2.send(register(c2, "erin", instance=INST, reg_id=2, call_id="e", cseq=2))
        resp = await c2.recv_response()
        assert resp.status == 200
        assert len(resp.contacts) == 2
        assert {c.reg_id for c in resp.contacts} == {1, 2}
        for c in resp.contacts:
            assert c.instance == f'"<{INST}>"'
        assert "outbound" in resp.require


async def test_reregister_over_new_connection_replaces(tmp_path: Path, autojump: MockClock) -> None:
    """OB-REG-07: same instance + reg-id from a new connection (and Call-ID) replaces the binding;
    the old connection's death then removes nothing."""
    async with running_server(tmp_path) as server:
        old = await TcpUA.open(addr(server, "tcp"))
        await old.send(register(old, "fred", instance=INST, reg_id=1, call_id="boot1"))
        assert (await old.recv_response()).status == 200
        new = await TcpUA.open(addr(server, "tcp"))
        await new.send(register(new, "fred", instance=INST, reg_id=1, call_id="boot2"))
        resp = await new.recv_response()
        assert len(resp.contacts) == 1
        await old.close()
        await trio.sleep(0.2)
        bindings = server.store.lookup("fred@example.com", server.clock.wall())
        assert len(bindings) == 1 and bindings[0].source.endswith(str(new.local[1]))


async def test_connection_drop_removes_exactly_that_flows_bindings(
    tmp_path: Path, autojump: MockClock
) -> None:
    """OB-REG-16 / OB-CS-09, WS-09: a closed TCP connection and a closed WebSocket each remove
    their own bindings only; a later fetch does not list them."""
    async with running_server(tmp_path) as server:
        keep = await UdpUA.open(addr(server, "udp"))
        await keep.send(register(keep, "gina", contact_host=keep.hostport()))
        assert (await keep.recv_response()).status == 200
        tcp = await TcpUA.open(addr(server, "tcp"))
        await tcp.send(register(tcp, "gina", instance=INST, reg_id=1))
        assert (await tcp.recv_response()).status == 200
        async with WsUA.open(addr(server, "ws")) as ws:
            await ws.send(register(ws, "gina", instance=INST2, reg_id=1, contact_host="x7.invalid"))
            assert len((await ws.recv_response()).contacts) == 3
        await tcp.close()
        await trio.sleep(0.2)
        await keep.send(register(keep, "gina", contact="", call_id="q").replace("Contact: \r\n", ""))
        resp = await keep.recv_response()
        assert [c.uri_text for c in resp.contacts] == [f"sip:gina@{keep.hostport()};ob"]


async def test_439_first_hop_lacks_outbound(tmp_path: Path) -> None:
    """OB-REG-03: two Vias, no Path with ob, reg-id + Supported: outbound -> 439, nothing stored."""
    async with running_server(tmp_path) as server:
        ua = await UdpUA.open(addr(server, "udp"))
        text = register(ua, "hank", instance=INST, reg_id=1, contact_host="10.1.1.1:5060")
        text = text.replace("Max-Forwards:", f"Via: SIP/2.0/UDP 10.2.2.2:5060;branch={branch()}\r\nMax-Forwards:", 1)
        await ua.send(text)
        resp = await ua.recv_response()
        assert resp.status == 439
        assert server.store.lookup("hank@example.com", server.clock.wall()) == []


async def test_path_stored_echoed_and_used(tmp_path: Path) -> None:
    """PATH-04/06: a REGISTER relayed by an edge proxy (Path with ob) stores the Path, echoes it
    with Supported: path, and later requests are sent to the Path with it as Route set.
    The edge proxy is reached through no flow of ours, so it must be in proxy.relay_domains
    (issue 16: a registered Path or Contact is no way around the relay policy); without that
    the binding is skipped: 480 and the edge hears nothing."""
    for relay, expect in ((["127.0.0.1"], 200), ([], 480)):
        async with running_server(tmp_path, proxy={"relay_domains": relay}) as server:
            edge = await UdpUA.open(addr(server, "udp"))  # plays the edge proxy
            path = f"<sip:tok123@{edge.hostport()};lr;ob>"
            text = register(edge, "ivan", instance=INST, reg_id=1, contact_host="10.3.3.3:5060", extra=[f"Path: {path}"])
            text = text.replace("Max-Forwards:", f"Via: SIP/2.0/UDP 10.3.3.3:5060;branch={branch()}\r\nMax-Forwards:", 1)
            await edge.send(text)
            resp = await edge.recv_response()
            assert resp.status == 200
            assert resp.header_values("path") == [path]
            caller = await UdpUA.open(addr(server, "udp"))
            await caller.send(request(caller, "MESSAGE", "sip:ivan@example.com", body="hi"))
            if expect == 480:
                assert (await caller.recv_response()).status == 480
                with trio.move_on_after(0.3):
                    got = await edge.recv_request()
                    raise AssertionError(f"the edge heard {got.start_line()}")
                continue
            msg = await edge.recv_request()
            assert msg.uri_text == "sip:ivan@10.3.3.3:5060;ob"
            assert [r.raw for r in msg.routes] == [path]


async def test_423_min_expires_and_star_removal_and_cseq_order(tmp_path: Path) -> None:
    async with running_server(tmp_path, registrar={"min_expires": 120}) as server:
        ua = await UdpUA.open(addr(server, "udp"))
        await ua.send(register(ua, "jill", expires=30, contact_host=ua.hostport()))
        r = await ua.recv_response()
        assert r.status == 423 and r.header("min-expires") == "120"  # REG3261-07
        await ua.send(register(ua, "jill", call_id="j", cseq=5, contact_host=ua.hostport()))
        assert (await ua.recv_response()).status == 200
        await ua.send(register(ua, "jill", call_id="j", cseq=4, contact_host=ua.hostport()))
        assert (await ua.recv_response()).status == 500  # REG3261-08: out of order
        await ua.send(register(ua, "jill", call_id="j", cseq=6, contact="*", expires=3600))
        assert (await ua.recv_response()).status == 400  # REG3261-05: * needs Expires: 0
        await ua.send(register(ua, "jill", call_id="j", cseq=7, contact="*", expires=0))
        r = await ua.recv_response()
        assert r.status == 200 and not r.contacts


async def test_gruu_assigned_and_routes_to_one_instance(tmp_path: Path, autojump: MockClock) -> None:
    """GRUU-01/02/04: pub-gruu and temp-gruu in the 200; a request to the pub-gruu reaches only
    that instance."""
    async with running_server(tmp_path) as server:
        a = await TcpUA.open(addr(server, "tcp"))
        b = await TcpUA.open(addr(server, "tcp"))
        await a.send(register(a, "kate", instance=INST, reg_id=1, contact_host="10.4.4.1:5060"))
        ra = await a.recv_response()
        await b.send(register(b, "kate", instance=INST2, reg_id=1, contact_host="10.4.4.2:5060"))
        await b.recv_response()
        mine = next(c for c in ra.contacts if c.instance_id == INST)
        pub = mine.param("pub-gruu")
        temp = mine.param("temp-gruu")
        assert pub and pub.strip('"') == f"sip:kate@example.com;gr={INST}"
        assert temp and temp.strip('"').endswith(";gr")
        caller = await UdpUA.open(addr(server, "udp"))
        await caller.send(request(caller, "MESSAGE", pub.strip('"'), body="just you"))
        m = await a.recv_request()
        await a.send(response_to(m, 200, "OK", to_tag="k"))
        assert (await caller.recv_response()).status == 200
        await b.expect_nothing(0.3)
        await caller.send(request(caller, "MESSAGE", temp.strip('"'), body="temp"))
        m2 = await a.recv_request()
        assert m2.body == b"temp"


async def test_register_query_and_expiry_timer(tmp_path: Path, autojump: MockClock) -> None:
    """REG3261-09: no Contact = query; bindings expire on time (a timer, not only lazily)."""
    async with running_server(tmp_path, registrar={"min_expires": 1}) as server:
        ua = await UdpUA.open(addr(server, "udp"))
        await ua.send(register(ua, "liam", expires=1, contact_host=ua.hostport()))
        r = await ua.recv_response()
        assert r.status == 200 and r.contacts[0].expires == 1
        await trio.sleep(2.5)
        assert server.store.count() == 0
