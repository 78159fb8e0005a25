"""Issue 20: a Record-Route or Via the server writes on a TCP connection it opened itself names
its listening address, never the connection's ephemeral local port. Before, a request forwarded
over an outgoing TCP connection carried ``Record-Route: <sip:...@127.0.0.1:49284...>`` and the far
end's BYE to that port failed. A trunk over TCP is the case: the server opens the connection."""

from __future__ import annotations

from pathlib import Path

import trio
from harness import TcpUA, UdpUA, addr, request, response_to, running_server

from sipserver.sip import SipURI


async def test_forwarded_over_our_own_tcp_connection_names_our_listener_and_the_bye_comes_back(
    tmp_path: Path,
) -> None:
    trunk_listener = trio.socket.socket()
    await trunk_listener.bind(("127.0.0.1", 0))
    trunk_listener.listen(4)
    trunk_port = trunk_listener.getsockname()[1]
    async with running_server(tmp_path, proxy={"relay_domains": ["127.0.0.1"]}) as server:
        tcp_host, tcp_port = addr(server, "tcp")
        alice = await UdpUA.open(addr(server, "udp"))
        ruri = f"sip:carrier@127.0.0.1:{trunk_port};transport=tcp"
        await alice.send(request(alice, "INVITE", ruri, call_id="trunk-call", contact=f"<sip:alice@{alice.hostport()}>"))
        sock, _ = await trunk_listener.accept()
        trunk = TcpUA(trio.SocketStream(sock), sock.getsockname()[:2])
        invite = await trunk.recv_request()
        # the connection's own local port is ephemeral; what we wrote must name the listener
        ephemeral = sock.getpeername()[1]
        assert ephemeral != tcp_port
        top_via = invite.vias[0]
        assert (top_via.host, top_via.port) == (tcp_host, tcp_port), invite.header_lines("via")
        rrs = invite.record_routes
        assert rrs, "the server record-routes the INVITE"
        for rr in rrs:
            uri = rr.uri
            assert isinstance(uri, SipURI) and uri.port != ephemeral, rr
        top_rr = rrs[0].uri
        assert isinstance(top_rr, SipURI) and top_rr.port == tcp_port
        await trunk.send(response_to(invite, 200, to_tag="trunk1", contact=f"<sip:carrier@127.0.0.1:{trunk_port};transport=tcp>"))
        ok = await alice.recv_response()
        assert ok.status == 200
        # The trunk hangs up over a NEW connection to the Record-Route it was given, as a UA
        # whose connection went away does (RFC 3261 §12.2.1.1: the route set is the RR list).
        await trunk.close()
        bye_conn = await TcpUA.open((top_rr.host, top_rr.port or 5060))
        routes = [v for v in invite.header_lines("record-route")]
        bye = request(
            bye_conn, "BYE", f"sip:alice@{alice.hostport()}", call_id="trunk-call", cseq=2,
            routes=routes, from_user="carrier", from_tag="trunk1", to="sip:alice@example.com",
            to_tag=invite.from_tag,
        )
        await bye_conn.send(bye)
        got = await alice.recv_request()
        assert got.method == "BYE" and got.call_id == "trunk-call"
        await alice.send(response_to(got, 200))
        assert (await bye_conn.recv_response()).status == 200
    trunk_listener.close()
