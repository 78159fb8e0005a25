"""The media layer against a real rtpengine (issue 18): ng over UDP, the per-leg flags of the
planner, the state machine driving offer/answer/delete, and rtpengine going away.

The daemon runs on loopback in userspace mode (tests/integration/rtpengine_fixture.py); no
media flows, the tests check what rtpengine writes into the SDP and what ``query`` reports."""

from __future__ import annotations

import re
import socket

import pytest
import trio
from rtpengine_fixture import RtpEngine, free_udp_port, rtpengine, start_rtpengine, stop_rtpengine  # noqa: F401

from sipserver.media import ng
from sipserver.media.client import MediaUnavailable, NgClient, NgCommandError, open_ng_client
from sipserver.media.metrics import MediaMetrics
from sipserver.media.planner import Leg, MediaProfile, classify, flags_towards
from sipserver.media.sdp import summarize
from sipserver.media.session import MediaSessions, MediaSettings, StepKind, Verdict
from sipserver.outbound.flow import Transport
from sipserver.sip import Request, Response, make_request, make_response

# A browser's offer (Chrome, trimmed): ICE, DTLS fingerprint, rtcp-mux, UDP/TLS/RTP/SAVPF.
WEBRTC_OFFER = (
    b"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    b"a=group:BUNDLE 0\r\na=msid-semantic: WMS\r\n"
    b"m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n"
    b"a=candidate:1 1 udp 2122260223 127.0.0.1 54321 typ host generation 0\r\n"
    b"a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-options:trickle\r\n"
    b"a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\n"
    b"a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\n"
    b"a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
)
# A browser's answer to an offer (setup:active: JSEP answers an actpass or passive offer active).
WEBRTC_ANSWER = WEBRTC_OFFER.replace(b"a=setup:actpass", b"a=setup:active").replace(b"a=group:BUNDLE 0\r\n", b"")
# A desk phone's offer/answer: plain RTP/AVP, no ICE, no DTLS.
PHONE_SDP = (
    b"v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=call\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)

BROWSER = Leg(Transport.WSS, ("127.0.0.1", 50123))
PHONE = Leg(Transport.UDP, ("127.0.0.1", 5062), contact_host="127.0.0.1")


def protos(sdp: bytes) -> list[bytes]:
    return re.findall(rb"^m=\S+ \d+ (\S+)", sdp, re.M)


def webrtc_leg_of(sdp: bytes) -> None:
    """What a browser needs from rtpengine's SDP (JSEP): DTLS-SRTP over ICE, rtcp-mux."""
    assert protos(sdp) == [b"UDP/TLS/RTP/SAVPF"], sdp
    assert b"a=ice-ufrag:" in sdp and b"a=ice-pwd:" in sdp and b"a=candidate:" in sdp
    assert b"a=fingerprint:sha-256 " in sdp
    assert b"a=rtcp-mux" in sdp
    assert b"a=crypto:" not in sdp  # SDES off towards browsers
    assert b"c=IN IP4 127.0.0.1" in sdp


def plain_leg_of(sdp: bytes) -> None:
    assert protos(sdp) == [b"RTP/AVP"], sdp
    for attribute in (b"a=ice-", b"a=candidate", b"a=fingerprint", b"a=setup", b"a=rtcp-mux", b"a=crypto"):
        assert attribute not in sdp, (attribute, sdp)
    assert b"c=IN IP4 127.0.0.1" in sdp


# ------------------------------------------------------------------------------ the ng client


async def test_ping(rtpengine: RtpEngine) -> None:  # noqa: F811
    async with open_ng_client([rtpengine.address]) as client:
        reply = await client.ping()
    assert reply.result == "pong" and reply.server == ng.parse_ng_address(rtpengine.address)


async def test_browser_to_phone_offer_answer_query_delete(rtpengine: RtpEngine) -> None:  # noqa: F811
    caller = classify(BROWSER, summarize(WEBRTC_OFFER))
    callee = classify(PHONE)
    async with open_ng_client([rtpengine.address]) as client:
        offered = await client.offer(
            "it-call-1", "A", WEBRTC_OFFER, flags_towards(callee.profile, caller, offer=True), via_branch="z9hG4bK1"
        )
        assert offered.sdp is not None
        plain_leg_of(offered.sdp)
        answered = await client.answer(
            "it-call-1", "A", "B", PHONE_SDP, flags_towards(caller.profile, classify(PHONE, summarize(PHONE_SDP)), offer=False),
            via_branch="z9hG4bK1",
        )
        assert answered.sdp is not None
        webrtc_leg_of(answered.sdp)
        assert b"a=setup:active" in answered.sdp  # rtpengine connects, as a browser answerer would
        assert b"a=rtpmap:0 PCMU/8000" in answered.sdp

        stats = await client.query("it-call-1")
        assert set(stats.tags) == {"A", "B"}
        assert stats.tags["A"].in_dialogue_with == "B"
        (a_media,) = stats.tags["A"].medias
        (b_media,) = stats.tags["B"].medias
        assert a_media.protocol == "UDP/TLS/RTP/SAVPF" and "ICE" in a_media.flags and "DTLS-SRTP" in a_media.flags
        assert b_media.protocol == "RTP/AVP" and b_media.streams[0].endpoint == ("127.0.0.1", 4000)
        assert stats.tags["B"].via_branch == "z9hG4bK1"
        for port in (s.local_port for m in (a_media, b_media) for s in m.streams if s.local_port):
            assert rtpengine.port_min <= port <= rtpengine.port_max

        deleted = await client.delete("it-call-1")
        assert deleted.result == "ok" and deleted.warning is None
        with pytest.raises(NgCommandError, match="Unknown call-id"):
            await client.query("it-call-1")


async def test_phone_to_browser(rtpengine: RtpEngine) -> None:  # noqa: F811
    caller = classify(PHONE, summarize(PHONE_SDP))
    callee = classify(BROWSER)
    async with open_ng_client([rtpengine.address]) as client:
        offered = await client.offer("it-call-2", "A", PHONE_SDP, flags_towards(callee.profile, caller, offer=True))
        assert offered.sdp is not None
        webrtc_leg_of(offered.sdp)
        assert b"a=mid:" in offered.sdp  # generate-mid: browsers want one per m= line
        assert b"a=rtcp:" not in offered.sdp or b"a=rtcp-mux" in offered.sdp
        answered = await client.answer(
            "it-call-2", "A", "B", WEBRTC_ANSWER, flags_towards(caller.profile, classify(BROWSER, summarize(WEBRTC_ANSWER)), offer=False)
        )
        assert answered.sdp is not None
        plain_leg_of(answered.sdp)
        await client.delete("it-call-2")


async def test_an_error_reply_is_typed(rtpengine: RtpEngine) -> None:  # noqa: F811
    async with open_ng_client([rtpengine.address]) as client:
        result = await client.execute(ng.NgCommand("offer", {"call-id": "x", "from-tag": "y"}))
        assert isinstance(result, ng.NgError) and "SDP" in result.reason
        # deleting an unknown call is only a warning
        reply = await client.delete("no-such-call")
        assert reply.warning is not None and "not found" in reply.warning


# ------------------------------------------------------------------------------ the state machine


def request(method: str, *, to_tag: str | None = None, cseq: int = 1, body: bytes = b"", branch: str = "z9hG4bKit1") -> Request:
    headers = [
        ("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch={branch}"),
        ("Via", "SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKcaller"),
        ("From", "<sip:alice@example.com>;tag=A"),
        ("To", "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")),
        ("Call-ID", "it-session"),
        ("CSeq", f"{cseq} {'INVITE' if method == 'ACK' else method}"),
    ]
    if body:
        headers.append(("Content-Type", "application/sdp"))
    return make_request(method, "sip:bob@127.0.0.1:5062", headers, body)


def response(req: Request, status: int, body: bytes = b"") -> Response:
    resp = make_response(req, status, to_tag="B", headers=[("Content-Type", "application/sdp")] if body else [])
    resp.body = body
    return resp


async def test_sessions_drive_a_call_through_rtpengine(rtpengine: RtpEngine) -> None:  # noqa: F811
    metrics = MediaMetrics()
    media = MediaSessions(MediaSettings(), metrics)
    async with open_ng_client([rtpengine.address], metrics=metrics) as client:
        invite = request("INVITE", body=WEBRTC_OFFER)
        step = media.on_request(invite, BROWSER, PHONE, now=0.0)
        assert step is not None
        assert (await client.run_step(step)).verdict is Verdict.REWRITTEN
        plain_leg_of(invite.body)
        assert invite.header("content-length") == str(len(invite.body))

        ok = response(invite, 200, PHONE_SDP)
        step = media.on_response(ok, now=1.0)
        assert step is not None and step.command.server is not None
        assert (await client.run_step(step)).verdict is Verdict.REWRITTEN
        webrtc_leg_of(ok.body)

        # the browser puts the call on hold with a re-INVITE: offer and answer again
        hold = request("INVITE", to_tag="B", cseq=2, body=WEBRTC_OFFER.replace(b"a=sendrecv", b"a=sendonly"), branch="z9hG4bKit2")
        step = media.on_request(hold, BROWSER, PHONE, now=2.0)
        assert step is not None and (await client.run_step(step)).verdict is Verdict.REWRITTEN
        assert b"a=sendonly" in hold.body
        plain_leg_of(hold.body)
        held = response(hold, 200, PHONE_SDP.replace(b"a=sendrecv", b"a=recvonly"))
        step = media.on_response(held, now=2.5)
        assert step is not None and (await client.run_step(step)).verdict is Verdict.REWRITTEN
        assert b"a=recvonly" in held.body

        assert media.active == 1
        stats = await client.query("it-session")
        assert set(stats.tags) == {"A", "B"}

        step = media.on_request(request("BYE", to_tag="B", cseq=3, branch="z9hG4bKit3"), BROWSER, PHONE, now=3.0)
        assert step is not None and step.kind is StepKind.DELETE
        assert (await client.run_step(step)).verdict is Verdict.DONE
        with pytest.raises(NgCommandError):
            await client.query("it-session")
    assert metrics.requests == {"offer": 2, "answer": 2, "query": 2, "delete": 1}
    assert metrics.rtt_count == 7 and metrics.anchored == 1


async def test_late_offer_through_rtpengine(rtpengine: RtpEngine) -> None:  # noqa: F811
    media = MediaSessions(MediaSettings())
    async with open_ng_client([rtpengine.address]) as client:
        invite = request("INVITE")
        assert media.on_request(invite, PHONE, BROWSER, now=0.0) is None
        ok = response(invite, 200, WEBRTC_OFFER)  # the browser offers in its 200
        step = media.on_response(ok, now=1.0)
        assert step is not None and step.kind is StepKind.OFFER
        assert (await client.run_step(step)).verdict is Verdict.REWRITTEN
        plain_leg_of(ok.body)
        ack = request("ACK", to_tag="B", body=PHONE_SDP, branch="z9hG4bKack")
        step = media.on_request(ack, PHONE, BROWSER, now=1.5)
        assert step is not None and step.kind is StepKind.ANSWER
        assert (await client.run_step(step)).verdict is Verdict.REWRITTEN
        webrtc_leg_of(ack.body)
        assert b"a=setup:active" in ack.body
        stats = await client.query("it-session")
        assert {m.protocol for t in stats.tags.values() for m in t.medias} == {"UDP/TLS/RTP/SAVPF", "RTP/AVP"}
        step = media.on_request(request("BYE", to_tag="B", cseq=2), PHONE, BROWSER, now=2.0)
        assert step is not None
        await client.run_step(step)


async def test_forked_call_one_rtpengine_call_two_legs(rtpengine: RtpEngine) -> None:  # noqa: F811
    media = MediaSessions(MediaSettings())
    browser2 = Leg(Transport.WS, ("127.0.0.1", 50999))
    async with open_ng_client([rtpengine.address]) as client:
        b1 = request("INVITE", body=PHONE_SDP, branch="z9hG4bKfork1")
        b2 = request("INVITE", body=PHONE_SDP, branch="z9hG4bKfork2")
        for branch, target in ((b1, BROWSER), (b2, browser2)):
            step = media.on_request(branch, PHONE, target, now=0.0)
            assert step is not None and (await client.run_step(step)).verdict is Verdict.REWRITTEN
            webrtc_leg_of(branch.body)
        ringing = make_response(b1, 180, to_tag="X", headers=[("Content-Type", "application/sdp")])
        ringing.body = WEBRTC_ANSWER
        step = media.on_response(ringing, now=1.0)
        assert step is not None and (await client.run_step(step)).verdict is Verdict.REWRITTEN
        plain_leg_of(ringing.body)
        answered = make_response(b2, 200, to_tag="Y", headers=[("Content-Type", "application/sdp")])
        answered.body = WEBRTC_ANSWER
        step = media.on_response(answered, now=2.0)
        assert step is not None and (await client.run_step(step)).verdict is Verdict.REWRITTEN
        plain_leg_of(answered.body)
        stats = await client.query("it-session")
        assert {"A", "X", "Y"} <= set(stats.tags)
        assert stats.tags["Y"].via_branch == "z9hG4bKfork2" and stats.tags["X"].via_branch == "z9hG4bKfork1"
        step = media.on_request(request("BYE", to_tag="Y", cseq=2), PHONE, browser2, now=3.0)
        assert step is not None and (await client.run_step(step)).verdict is Verdict.DONE
        with pytest.raises(NgCommandError):
            await client.query("it-session")


# ------------------------------------------------------------------------------ rtpengine away


async def test_rtpengine_down_is_media_unavailable_within_the_budget(tmp_path: object) -> None:
    """Nothing listens: ICMP port unreachable on the connected socket ends it at once; a peer
    that swallows datagrams costs timeout * (retransmissions + 1)."""
    closed = f"udp:127.0.0.1:{free_udp_port()}"
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        await sink.bind(("127.0.0.1", 0))
        silent = f"udp:127.0.0.1:{sink.getsockname()[1]}"
        async with open_ng_client([closed, silent], timeout=0.2, retransmissions=1) as client:
            start = trio.current_time()
            with pytest.raises(MediaUnavailable) as info:
                await client.ping()
            elapsed = trio.current_time() - start
            assert "refused" in info.value.reason and "no reply to 2 tries of 0.2 s" in info.value.reason
            assert 0.35 < elapsed < 2.0, elapsed
            # both are dead now: one try each, dead ones last
            start = trio.current_time()
            with pytest.raises(MediaUnavailable):
                await client.ping()
            assert trio.current_time() - start < 1.0
    # a session step on a dead rtpengine: reject with 503, within the budget
    media = MediaSessions(MediaSettings())
    async with open_ng_client([closed], timeout=0.2, retransmissions=2) as client:
        invite = request("INVITE", body=WEBRTC_OFFER)
        step = media.on_request(invite, BROWSER, PHONE, now=0.0)
        assert step is not None
        with trio.fail_after(2.0):  # budget 0.6 s; ICMP makes it immediate
            outcome = await client.run_step(step)
        assert outcome.reject and outcome.status == 503 and invite.body == WEBRTC_OFFER


async def test_failover_to_the_next_rtpengine(rtpengine: RtpEngine) -> None:  # noqa: F811
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        await sink.bind(("127.0.0.1", 0))
        silent = f"udp:127.0.0.1:{sink.getsockname()[1]}"
        async with open_ng_client([silent, rtpengine.address], timeout=0.2, retransmissions=1, dead_time=60) as client:
            start = trio.current_time()
            reply = await client.ping()
            assert reply.server == ng.parse_ng_address(rtpengine.address)
            assert 0.35 < trio.current_time() - start < 2.0
            # the silent one is skipped now: straight to the live one (no 0.4 s wait)
            start = trio.current_time()
            reply = await client.offer("fo-call", "A", PHONE_SDP)
            assert trio.current_time() - start < 0.35 and reply.server == ng.parse_ng_address(rtpengine.address)
            await client.delete("fo-call")


async def test_rtpengine_stopping_mid_call(tmp_path: object) -> None:
    from pathlib import Path

    engine = start_rtpengine(Path(str(tmp_path)))
    try:
        media = MediaSessions(MediaSettings())
        async with open_ng_client([engine.address], timeout=0.2, retransmissions=1) as client:
            invite = request("INVITE", body=WEBRTC_OFFER)
            step = media.on_request(invite, BROWSER, PHONE, now=0.0)
            assert step is not None and (await client.run_step(step)).verdict is Verdict.REWRITTEN
            stop_rtpengine(engine)
            ok = response(invite, 200, PHONE_SDP)
            step = media.on_response(ok, now=1.0)
            assert step is not None
            with trio.fail_after(2.0):  # budget 0.4 s
                outcome = await client.run_step(step)
            assert outcome.verdict is Verdict.PASSED and ok.body == PHONE_SDP  # a 200 is never refused
    finally:
        stop_rtpengine(engine)


def test_client_settings_from_the_config_section() -> None:
    from sipserver.config import config_from_dict

    cfg = config_from_dict({"media": {"rtpengine": ["udp:127.0.0.1:2223", "udp:[::1]:2224"], "timeout": 0.25, "retransmissions": 4}})
    client = NgClient.from_section(cfg.media)
    assert [str(s.address) for s in client.servers] == ["udp:127.0.0.1:2223", "udp:[::1]:2224"]
    assert client.timeout == 0.25 and client.tries == 5 and client.dead_time == 30.0
    assert cfg.media.enabled and not config_from_dict({}).media.enabled
    assert MediaSettings.from_section(cfg.media) == MediaSettings()
    assert flags_towards(MediaProfile.PLAIN, classify(PHONE), offer=True).ice == "remove"


def test_a_missing_rtpengine_fails_under_ci_and_skips_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    import rtpengine_fixture

    monkeypatch.setattr(rtpengine_fixture, "BINARY_CANDIDATES", ("/nonexistent/rtpengine",))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: rtpengine is not installed"):
        rtpengine_fixture.require_rtpengine()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="rtpengine is not installed"):
        rtpengine_fixture.require_rtpengine()
