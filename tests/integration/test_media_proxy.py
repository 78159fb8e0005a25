"""Issue 18 (media anchoring through rtpengine), on the wire: the real server in-process with a
real rtpengine (tests/integration/rtpengine_fixture.py), raw-socket phones (harness.py).

A "browser" is a UA on the WebSocket listener with a WebRTC offer/answer (UDP/TLS/RTP/SAVPF, ICE,
DTLS fingerprint, rtcp-mux); a "phone" a UA on UDP with plain RTP/AVP. The tests check what each
side receives (protocols, addresses, ICE and DTLS attributes) and what rtpengine holds (``query``).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from harness import (
    UA,
    UdpUA,
    WsUA,
    addr,
    autojump_fixture,  # noqa: F401  (the autojump fixture: a MockClock)
    register,
    request,
    response_to,
    running_server,
)
from rtpengine_fixture import RtpEngine, free_udp_port, rtpengine  # noqa: F401
from test_media_rtpengine import (
    PHONE_SDP,
    WEBRTC_ANSWER,
    WEBRTC_OFFER,
    plain_leg_of,
    protos,
    webrtc_leg_of,
)
from trio.testing import MockClock

from sipserver import cli
from sipserver.media.bencode import encode
from sipserver.media.client import NgCommandError, open_ng_client
from sipserver.media.ng import split_message
from sipserver.runtime import Server
from sipserver.sip import Request, Response

MGMT = {"listen": "127.0.0.1:0"}
INSTANCE = "urn:uuid:00000000-0000-1000-8000-00000000b0b0"
SDP_TYPE = ["Content-Type: application/sdp"]


def media_section(engine: str, **kw: Any) -> dict[str, Any]:
    return {"rtpengine": [engine], **kw}


@asynccontextmanager
async def media_server(tmp_path: Path, engine: str, **media: Any) -> AsyncIterator[Server]:
    async with running_server(tmp_path, mgmt=MGMT, media=media_section(engine, **media)) as server:
        yield server


async def reg_phone(server: Server, user: str) -> UdpUA:
    """A plain phone registered over UDP from the address in its Contact (no NAT)."""
    ua = await UdpUA.open(addr(server, "udp"))
    await ua.send(register(ua, user, supported=None, contact_host=ua.hostport()))
    resp = await ua.recv_response()
    assert resp.status == 200, resp.reason
    return ua


@asynccontextmanager
async def browser(server: Server, user: str | None = None) -> AsyncIterator[WsUA]:
    """A WebSocket UA; registered with outbound (a .invalid Contact, like SIP.js) when ``user``."""
    async with WsUA.open(addr(server, "ws")) as ua:
        if user is not None:
            await ua.send(register(ua, user, instance=INSTANCE, reg_id=1, contact_host="df7jal23ls0d.invalid"))
            resp = await ua.recv_response()
            assert resp.status == 200, resp.reason
        yield ua


def invite(ua: UA, callee: str, call_id: str, body: bytes = b"", tag: str = "caller1", br: str | None = None) -> str:
    return request(
        ua, "INVITE", f"sip:{callee}@example.com", call_id=call_id, from_tag=tag, via_branch=br,
        contact=f"<sip:caller@{ua.hostport()}>", body=body.decode(),
    )


def answer(inv: Request, status: int, body: bytes, tag: str, ua: UA) -> str:
    return response_to(inv, status, "OK" if status == 200 else "Session Progress", to_tag=tag,
                       contact=f"<sip:callee@{ua.hostport()}>", extra=SDP_TYPE if body else None, body=body.decode())


async def final(ua: UA, method: str = "INVITE", timeout: float = 3.0) -> Response:
    while True:
        r = await ua.recv_response(timeout)
        if r.cseq.method == method:
            return r


async def in_dialog(ua: UA, method: str, ok: Response, call_id: str, tag: str, cseq: int, body: bytes = b"") -> None:
    """ACK or BYE from the caller, along the Record-Route of the 2xx."""
    routes = [r.raw for r in reversed(ok.record_routes)]
    contact = ok.contacts[0].uri_text
    await ua.send(request(ua, method, contact, call_id=call_id, from_tag=tag, to="sip:x@example.com",
                          to_tag=ok.to_tag, routes=routes, cseq=cseq, body=body.decode()))


async def query(engine: RtpEngine, call_id: str) -> Any:
    async with open_ng_client([engine.address]) as client:
        return await client.query(call_id)


async def gone(engine: RtpEngine, call_id: str, timeout: float = 2.0) -> bool:
    """rtpengine forgot ``call_id`` (deletes run in the background: poll a little)."""
    async with open_ng_client([engine.address]) as client:
        with trio.move_on_after(timeout):
            while True:
                try:
                    await client.query(call_id)
                except NgCommandError as exc:
                    assert "Unknown call-id" in str(exc)
                    return True
                await trio.sleep(0.1)
    return False


def rtpengine_port(engine: RtpEngine, sdp: bytes) -> int:
    port = int(re.search(rb"^m=audio (\d+) ", sdp, re.M).group(1))  # type: ignore[union-attr]
    assert engine.port_min <= port <= engine.port_max, sdp
    return port


async def get_json(server: Server, path: str) -> Any:
    assert server.mgmt_address is not None
    stream = await trio.open_tcp_stream(*server.mgmt_address)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(body) if path != "/metrics" else body.decode()


async def ctl(server: Server, *args: str) -> str:
    """``sipserver ctl --mgmt ADDR ARGS`` (a blocking HTTP client: in a thread), its stdout."""
    assert server.mgmt_address is not None
    host, port = server.mgmt_address

    def run() -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main(["ctl", "--mgmt", f"{host}:{port}", *args]) == 0
        return out.getvalue()

    return await trio.to_thread.run_sync(run)


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m is not None, f"{name} not in metrics"
    return float(m.group(1))


# ------------------------------------------------------------------------------ the tests


async def test_browser_calls_phone_anchored_and_bye_deletes(tmp_path: Path, rtpengine: RtpEngine) -> None:  # noqa: F811
    """Issue 18: a WebSocket caller with a WebRTC offer calling a plain UDP phone is anchored:
    the phone gets RTP/AVP on rtpengine's address without ICE or DTLS, the browser's 200 is
    UDP/TLS/RTP/SAVPF with ICE and a fingerprint; ctl/metrics show the call; BYE deletes it."""
    async with media_server(tmp_path, rtpengine.address) as server:
        phone = await reg_phone(server, "phone")
        async with browser(server) as web:
            await web.send(invite(web, "phone", "m-b2p", WEBRTC_OFFER))
            inv = await phone.recv_request()
            assert inv.method == "INVITE"
            plain_leg_of(inv.body)
            rtpengine_port(rtpengine, inv.body)
            assert int(inv.header("content-length") or 0) == len(inv.body)
            await phone.send(answer(inv, 200, PHONE_SDP, "callee1", phone))
            ok = await final(web)
            assert ok.status == 200
            webrtc_leg_of(ok.body)
            assert b"a=setup:active" in ok.body  # rtpengine is the DTLS client, the browser the server
            rtpengine_port(rtpengine, ok.body)

            stats = await query(rtpengine, "m-b2p")
            assert set(stats.tags) == {"caller1", "callee1"}
            (a_media,) = stats.tags["caller1"].medias
            assert a_media.protocol == "UDP/TLS/RTP/SAVPF" and "ICE" in a_media.flags
            (b_media,) = stats.tags["callee1"].medias
            assert b_media.protocol == "RTP/AVP" and b_media.streams[0].endpoint == ("127.0.0.1", 4000)

            calls = await get_json(server, "/media")
            assert calls["active"] == 1 and calls["calls"][0]["call_id"] == "m-b2p"
            table = await ctl(server, "media")
            assert "1 anchored calls" in table and re.search(r"^m-b2p +webrtc +anchored +answered +1/1 ", table, re.M), table
            assert calls["calls"][0]["caller"] == "webrtc" and calls["calls"][0]["confirmed"] is True
            text = await get_json(server, "/metrics")
            assert metric(text, "sipserver_media_sessions") == 1
            assert metric(text, "sipserver_media_sessions_anchored_total") == 1
            assert metric(text, "sipserver_media_ng_rtt_seconds_count") >= 2

            await in_dialog(web, "ACK", ok, "m-b2p", "caller1", 1)
            assert (await phone.recv_request()).method == "ACK"
            await in_dialog(web, "BYE", ok, "m-b2p", "caller1", 2)
            bye = await phone.recv_request()
            assert bye.method == "BYE"
            await phone.send(response_to(bye, 200, "OK"))
            assert (await final(web, "BYE")).status == 200
            assert await gone(rtpengine, "m-b2p"), "BYE did not delete the rtpengine call"
            assert (await get_json(server, "/media"))["count"] == 0
            text = await get_json(server, "/metrics")
            assert 'sipserver_media_ng_requests_total{command="delete"} 1' in text
            assert metric(text, "sipserver_media_sessions") == 0


async def test_phone_calls_browser_anchored(tmp_path: Path, rtpengine: RtpEngine) -> None:  # noqa: F811
    """Issue 18, the reverse direction: a UDP phone's RTP/AVP offer reaches the registered
    browser (over its outbound WebSocket flow) as WebRTC SDP; the browser's answer reaches the
    phone as RTP/AVP on rtpengine's address."""
    async with media_server(tmp_path, rtpengine.address) as server, browser(server, "web") as web:
        phone = await UdpUA.open(addr(server, "udp"))
        await phone.send(invite(phone, "web", "m-p2b", PHONE_SDP, tag="phone1"))
        inv = await web.recv_request()
        webrtc_leg_of(inv.body)
        assert b"a=setup:actpass" in inv.body or b"a=setup:passive" in inv.body  # the browser may connect
        await web.send(answer(inv, 200, WEBRTC_ANSWER, "web1", web))
        ok = await final(phone)
        assert ok.status == 200
        plain_leg_of(ok.body)
        rtpengine_port(rtpengine, ok.body)
        stats = await query(rtpengine, "m-p2b")
        assert set(stats.tags) == {"phone1", "web1"}
        await in_dialog(phone, "BYE", ok, "m-p2b", "phone1", 2)
        bye = await web.recv_request()
        await web.send(response_to(bye, 200, "OK"))
        assert (await final(phone, "BYE")).status == 200
        assert await gone(rtpengine, "m-p2b")


async def test_two_plain_phones_on_one_lan_untouched(tmp_path: Path, rtpengine: RtpEngine) -> None:  # noqa: F811
    """Issue 18, anchor = auto: two plain phones, neither behind NAT, keep their SDP byte for
    byte and rtpengine never hears of the call."""
    async with media_server(tmp_path, rtpengine.address, anchor="auto") as server:
        bob = await reg_phone(server, "bob")
        alice = await UdpUA.open(addr(server, "udp"))
        offer = PHONE_SDP
        answer_sdp = PHONE_SDP.replace(b"4000", b"4002").replace(b"o=phone 1", b"o=phone 2")
        await alice.send(invite(alice, "bob", "m-lan", offer, tag="a1"))
        inv = await bob.recv_request()
        assert inv.body == offer
        await bob.send(answer(inv, 200, answer_sdp, "b1", bob))
        ok = await final(alice)
        assert ok.status == 200 and ok.body == answer_sdp
        assert await gone(rtpengine, "m-lan", timeout=0.1), "rtpengine knows a call it was never offered"
        assert server.media is not None and server.media.metrics.requests == {}
        assert (await get_json(server, "/media"))["count"] == 0


async def test_fork_to_two_contacts_is_one_rtpengine_call(tmp_path: Path, rtpengine: RtpEngine) -> None:  # noqa: F811
    """Issue 18: a browser's INVITE forked to two contacts of one AoR makes one rtpengine call
    (one leg per branch, keyed by via-branch); the answering branch's SDP reaches the browser,
    the other branch is CANCELled, and the call survives until the BYE."""
    async with media_server(tmp_path, rtpengine.address) as server:
        desk = await reg_phone(server, "pat")
        soft = await reg_phone(server, "pat")
        async with browser(server) as web:
            await web.send(invite(web, "pat", "m-fork", WEBRTC_OFFER, tag="w1"))
            inv1, inv2 = await desk.recv_request(), await soft.recv_request()
            for inv in (inv1, inv2):
                plain_leg_of(inv.body)
                rtpengine_port(rtpengine, inv.body)
            assert inv1.top_via.branch != inv2.top_via.branch
            await desk.send(response_to(inv1, 180, "Ringing", to_tag="desk1"))
            await soft.send(answer(inv2, 200, PHONE_SDP, "soft1", soft))
            ok = await final(web)
            webrtc_leg_of(ok.body)
            cancel = await desk.recv_request()
            while cancel.method == "INVITE":  # a retransmission (UDP) before the 180 got there
                cancel = await desk.recv_request()
            assert cancel.method == "CANCEL"
            await desk.send(response_to(cancel, 200, "OK"))
            await desk.send(response_to(inv1, 487, "Request Terminated", to_tag="desk1"))
            stats = await query(rtpengine, "m-fork")
            assert "w1" in stats.tags and "soft1" in stats.tags
            assert stats.tags["w1"].in_dialogue_with == "soft1"
            assert server.media is not None and server.media.metrics.anchored == 1
            assert len(server.media.sessions) == 1
            await in_dialog(web, "BYE", ok, "m-fork", "w1", 2)
            bye = await soft.recv_request()
            await soft.send(response_to(bye, 200, "OK"))
            assert await gone(rtpengine, "m-fork")


async def test_late_offer_answer_in_ack(tmp_path: Path, rtpengine: RtpEngine) -> None:  # noqa: F811
    """Issue 18, late offer (RFC 3261 §13.2.1): a browser's INVITE without SDP; the phone's 200
    carries the offer, which reaches the browser as WebRTC SDP; the browser's ACK carries the
    answer, which reaches the phone as RTP/AVP on rtpengine's address."""
    async with media_server(tmp_path, rtpengine.address) as server:
        phone = await reg_phone(server, "phone")
        async with browser(server) as web:
            await web.send(invite(web, "phone", "m-late", b"", tag="l1"))
            inv = await phone.recv_request()
            assert inv.body == b""
            await phone.send(answer(inv, 200, PHONE_SDP, "p1", phone))
            ok = await final(web)
            webrtc_leg_of(ok.body)
            await in_dialog(web, "ACK", ok, "m-late", "l1", 1, body=WEBRTC_ANSWER)
            ack = await phone.recv_request()
            assert ack.method == "ACK"
            plain_leg_of(ack.body)
            rtpengine_port(rtpengine, ack.body)
            assert int(ack.header("content-length") or 0) == len(ack.body)
            stats = await query(rtpengine, "m-late")
            assert set(stats.tags) == {"l1", "p1"}


async def test_cancel_deletes_the_rtpengine_call(tmp_path: Path, rtpengine: RtpEngine) -> None:  # noqa: F811
    """Issue 18, RFC 3261 §9.2: the caller's CANCEL before any 2xx deletes the call from
    rtpengine; the caller still gets its 487 (PX-14)."""
    async with media_server(tmp_path, rtpengine.address) as server:
        phone = await reg_phone(server, "phone")
        async with browser(server) as web:
            br = "z9hG4bK" + secrets.token_hex(6)
            await web.send(invite(web, "phone", "m-cancel", WEBRTC_OFFER, tag="c1", br=br))
            inv = await phone.recv_request()
            await phone.send(response_to(inv, 180, "Ringing", to_tag="r1"))
            assert (await web.recv_response(skip_provisional=False)).status in (100, 180)
            assert set((await query(rtpengine, "m-cancel")).tags) >= {"c1"}
            await web.send(
                f"CANCEL sip:phone@example.com SIP/2.0\r\nVia: SIP/2.0/WS {web.hostport()};branch={br};rport\r\n"
                "Max-Forwards: 70\r\nTo: <sip:phone@example.com>\r\nFrom: <sip:caller@example.com>;tag=c1\r\n"
                "Call-ID: m-cancel\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
            )
            assert (await final(web, "CANCEL")).status == 200
            down = await phone.recv_request()
            assert down.method == "CANCEL"
            await phone.send(response_to(down, 200, "OK"))
            await phone.send(response_to(inv, 487, "Request Terminated", to_tag="r1"))
            assert (await final(web)).status == 487
            assert await gone(rtpengine, "m-cancel")
            assert server.media is not None and len(server.media.sessions) == 0


@pytest.mark.parametrize("down", ["refused", "silent"])
async def test_rtpengine_down_reject_is_503_quickly(tmp_path: Path, down: str) -> None:
    """Issue 18, media.on_failure = reject: with no rtpengine answering (nothing on the port:
    ICMP refused; or a socket that swallows every request) the browser's INVITE gets a 503 within
    the ng time budget (timeout 0.1 s x 2 tries) and the phone is never rung."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1] if down == "silent" else free_udp_port()
    try:
        async with media_server(tmp_path, f"udp:127.0.0.1:{port}", timeout=0.1, retransmissions=1) as server:
            phone = await reg_phone(server, "phone")
            async with browser(server) as web:
                started = trio.current_time()
                await web.send(invite(web, "phone", "m-down", WEBRTC_OFFER))
                resp = await final(web)
                elapsed = trio.current_time() - started
                assert resp.status == 503, (resp.status, resp.reason)
                assert "media" in resp.reason
                assert elapsed < 1.0, elapsed
                await phone.expect_nothing(0.3)
                assert server.media is not None and server.media.metrics.failures == {"reject": 1}
                kind = "refused" if down == "refused" else "timeout"
                assert any(k == kind for (_, k) in server.media.metrics.errors), server.media.metrics.errors
    finally:
        silent.close()


async def test_rtpengine_down_pass_goes_on_untouched(tmp_path: Path) -> None:
    """Issue 18, media.on_failure = pass: no rtpengine answers; the call goes on with both SDPs
    exactly as sent (the browser and the phone cannot talk, but signalling is not refused)."""
    async with media_server(tmp_path, f"udp:127.0.0.1:{free_udp_port()}", on_failure="pass", timeout=0.1) as server:
        phone = await reg_phone(server, "phone")
        async with browser(server) as web:
            await web.send(invite(web, "phone", "m-pass", WEBRTC_OFFER))
            inv = await phone.recv_request()
            assert inv.body == WEBRTC_OFFER and protos(inv.body) == [b"UDP/TLS/RTP/SAVPF"]
            await phone.send(answer(inv, 200, PHONE_SDP, "p1", phone))
            ok = await final(web)
            assert ok.status == 200 and ok.body == PHONE_SDP
            assert server.media is not None and server.media.metrics.failures == {"pass": 1}


async def test_reinvite_offer_is_anchored(tmp_path: Path, rtpengine: RtpEngine) -> None:  # noqa: F811
    """Issue 18: a re-INVITE (RFC 3261 §14) inside an anchored call is an offer too: the phone
    gets RTP/AVP from rtpengine on the same ports, the browser's 200 WebRTC SDP again."""
    async with media_server(tmp_path, rtpengine.address) as server:
        phone = await reg_phone(server, "phone")
        async with browser(server) as web:
            await web.send(invite(web, "phone", "m-re", WEBRTC_OFFER, tag="r1"))
            inv = await phone.recv_request()
            first_port = rtpengine_port(rtpengine, inv.body)
            await phone.send(answer(inv, 200, PHONE_SDP, "p1", phone))
            ok = await final(web)
            await in_dialog(web, "ACK", ok, "m-re", "r1", 1)
            assert (await phone.recv_request()).method == "ACK"
            hold = WEBRTC_OFFER.replace(b"a=sendrecv", b"a=sendonly").replace(b" 2 IN IP4", b" 3 IN IP4")
            await in_dialog(web, "INVITE", ok, "m-re", "r1", 2, body=hold)
            reinv = await phone.recv_request()
            assert reinv.method == "INVITE"
            plain_leg_of(reinv.body)
            assert rtpengine_port(rtpengine, reinv.body) == first_port
            assert b"a=sendonly" in reinv.body
            await phone.send(answer(reinv, 200, PHONE_SDP.replace(b"a=sendrecv", b"a=recvonly"), "p1", phone))
            ok2 = await final(web)
            assert ok2.status == 200
            webrtc_leg_of(ok2.body)
            assert server.media is not None
            assert server.media.metrics.requests == {"offer": 2, "answer": 2}


async def test_a_call_without_bye_is_deleted_after_session_timeout(
    tmp_path: Path, rtpengine: RtpEngine, autojump: MockClock  # noqa: F811
) -> None:
    """Issue 18: the server's timer loop deletes an answered call whose BYE never came once
    media.session_timeout has passed without signalling (virtual time: autojump)."""
    async with media_server(tmp_path, rtpengine.address, session_timeout=30.0) as server:
        phone = await reg_phone(server, "phone")
        async with browser(server) as web:
            await web.send(invite(web, "phone", "m-lost", WEBRTC_OFFER, tag="t1"))
            inv = await phone.recv_request()
            await phone.send(answer(inv, 200, PHONE_SDP, "p1", phone))
            ok = await final(web)
            await in_dialog(web, "ACK", ok, "m-lost", "t1", 1)
            assert (await phone.recv_request()).method == "ACK"
            await trio.sleep(20)
            assert server.media is not None and "m-lost" in server.media.sessions
            assert not await gone(rtpengine, "m-lost", timeout=0.1)
            await trio.sleep(12)
            assert await gone(rtpengine, "m-lost"), "the call outlived media.session_timeout"
            assert "m-lost" not in server.media.sessions


# ------------------------------------------------------------------------------ a scripted rtpengine


class ScriptedEngine:
    """A UDP socket speaking ng that answers only when the test says so: what the server does
    while rtpengine has not answered yet."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.port = sock.getsockname()[1]

    @classmethod
    async def open(cls) -> ScriptedEngine:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        return cls(sock)

    async def request(self, timeout: float = 3.0) -> tuple[str, dict[bytes, Any], Any]:
        with trio.fail_after(timeout):
            data, peer = await self.sock.recvfrom(65535)
        cookie, body = split_message(data)
        return cookie, body, peer

    async def reply(self, req: tuple[str, dict[bytes, Any], Any], **fields: Any) -> None:
        cookie, _, peer = req
        await self.sock.sendto(cookie.encode() + b" " + encode({"result": "ok", **fields}), peer)


async def test_cancel_while_rtpengine_holds_the_offer(tmp_path: Path) -> None:
    """Issue 18, RFC 3261 §9.2: the caller CANCELs while its offer is still with rtpengine: the
    callee is never rung, the caller gets 487 as soon as the offer's reply is in (not held back by
    the delete, which follows the offer so rtpengine cannot re-create the call)."""
    engine = await ScriptedEngine.open()
    async with media_server(tmp_path, f"udp:127.0.0.1:{engine.port}", timeout=2.0) as server:
        phone = await reg_phone(server, "phone")
        async with browser(server) as web:
            br = "z9hG4bK" + secrets.token_hex(6)
            await web.send(invite(web, "phone", "m-early-cancel", WEBRTC_OFFER, tag="e1", br=br))
            offer = await engine.request()
            assert offer[1][b"command"] == b"offer"
            await web.send(
                f"CANCEL sip:phone@example.com SIP/2.0\r\nVia: SIP/2.0/WS {web.hostport()};branch={br};rport\r\n"
                "Max-Forwards: 70\r\nTo: <sip:phone@example.com>\r\nFrom: <sip:caller@example.com>;tag=e1\r\n"
                "Call-ID: m-early-cancel\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
            )
            assert (await final(web, "CANCEL")).status == 200
            await engine.reply(offer, sdp=PHONE_SDP)
            assert (await final(web)).status == 487  # the delete is not answered yet
            delete = await engine.request()
            assert delete[1][b"command"] == b"delete" and delete[1][b"call-id"] == b"m-early-cancel"
            await engine.reply(delete)
            await phone.expect_nothing(0.3)
            assert server.media is not None and len(server.media.sessions) == 0
    engine.sock.close()


async def test_a_response_never_overtakes_one_waiting_for_rtpengine(tmp_path: Path) -> None:
    """Issue 18: a 183 whose answer is still with rtpengine holds back the 180 that came after
    it (same call), and only that call: the caller gets 183 (rewritten) then 180."""
    engine = await ScriptedEngine.open()
    async with media_server(tmp_path, f"udp:127.0.0.1:{engine.port}", timeout=2.0) as server:
        phone = await reg_phone(server, "phone")
        async with browser(server) as web:
            await web.send(invite(web, "phone", "m-order", WEBRTC_OFFER, tag="o1"))
            offer = await engine.request()
            await engine.reply(offer, sdp=PHONE_SDP)
            inv = await phone.recv_request()
            assert inv.body == PHONE_SDP  # rtpengine's SDP (here: the scripted one)
            assert (await web.recv_response(skip_provisional=False)).status == 100
            await phone.send(answer(inv, 183, PHONE_SDP, "q1", phone))
            answer_req = await engine.request()
            assert answer_req[1][b"command"] == b"answer"
            await phone.send(response_to(inv, 180, "Ringing", to_tag="q1"))
            await web.expect_nothing(0.3)  # the 180 waits behind the 183
            await engine.reply(answer_req, sdp=WEBRTC_ANSWER)
            first = await web.recv_response(skip_provisional=False)
            second = await web.recv_response(skip_provisional=False)
            assert (first.status, second.status) == (183, 180)
            assert first.body == WEBRTC_ANSWER
    engine.sock.close()
