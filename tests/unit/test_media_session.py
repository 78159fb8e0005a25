"""The anchoring state machine (sipserver/media/session.py): which ng command each SIP event
needs and what its result does to the message. Issue 18: offer on INVITE/re-INVITE/UPDATE with
SDP, answer on 18x/2xx with SDP, late offer (offer in the 2xx, answer in the ACK), forks (one
rtpengine call, a via-branch per fork, a to-tag per answer), delete on BYE, CANCEL, final
failure and timeout; on failure reject (503) or pass."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.media.metrics import MediaMetrics
from sipserver.media.ng import NgAddress, NgError, NgOk, NgUnavailable
from sipserver.media.planner import AnchorMode, Leg
from sipserver.media.session import (
    FailurePolicy,
    MediaSessions,
    MediaSettings,
    MediaStep,
    StepKind,
    Verdict,
)
from sipserver.outbound.flow import Transport
from sipserver.sip import Request, Response, make_request, make_response, parse_message

T0 = 1000.0
CALLER_VIA = "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKcaller"
WEBRTC_SDP = (
    b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    b"c=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=fingerprint:sha-256 AB:CD\r\na=rtcp-mux\r\n"
)
PLAIN_SDP = b"v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
CALLEE_SDP = b"v=0\r\no=- 1 1 IN IP4 10.0.0.6\r\ns=-\r\nc=IN IP4 10.0.0.6\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n"

BROWSER = Leg(Transport.WSS, ("198.51.100.20", 50123))
BROWSER2 = Leg(Transport.WS, ("198.51.100.21", 50124))
PHONE = Leg(Transport.UDP, ("10.0.0.5", 5060), contact_host="10.0.0.5")
PHONE2 = Leg(Transport.UDP, ("10.0.0.6", 5060), contact_host="10.0.0.6")
RTPENGINE = NgAddress("127.0.0.1", 2223)


def sessions(**settings: object) -> MediaSessions:
    return MediaSessions(MediaSettings(**settings), MediaMetrics())  # type: ignore[arg-type]


def request(
    method: str = "INVITE",
    *,
    from_tag: str = "A",
    to_tag: str | None = None,
    cseq: int = 1,
    body: bytes = b"",
    branch: str = "z9hG4bKb1",
    call_id: str = "call-1",
    content_type: str = "application/sdp",
) -> Request:
    """A request as it goes down one branch: our Via on top, the sender's below."""
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    headers = [
        ("Via", f"SIP/2.0/UDP 192.0.2.1:5060;branch={branch}"),
        ("Via", CALLER_VIA),
        ("From", f"<sip:alice@example.com>;tag={from_tag}"),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {'INVITE' if method == 'ACK' else method}"),
        ("Max-Forwards", "69"),
    ]
    if body:
        headers += [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    return make_request(method, "sip:bob@10.0.0.6", headers, body)


def response(req: Request, status: int, to_tag: str | None, body: bytes = b"") -> Response:
    headers = [("Content-Type", "application/sdp"), ("Content-Length", str(len(body)))] if body else []
    resp = make_response(req, status, to_tag=to_tag, headers=headers)
    resp.body = body
    return resp


def ok(sdp: bytes | None = b"v=0\r\nREWRITTEN\r\n", server: NgAddress | None = RTPENGINE) -> NgOk:
    return NgOk("ok", sdp, server=server)


def params(step: MediaStep | None) -> dict[str, object]:
    assert step is not None
    return {k: v for k, v in step.command.params.items() if k != "sdp"}


# ------------------------------------------------------------------------------ offer / answer


def test_offer_answer_browser_to_phone() -> None:
    media = sessions()
    inv = request(body=WEBRTC_SDP)
    step = media.on_request(inv, BROWSER, PHONE, now=T0)
    assert step is not None and step.kind is StepKind.OFFER and step.command.name == "offer"
    p = params(step)
    assert p["call-id"] == "call-1" and p["from-tag"] == "A" and p["via-branch"] == "z9hG4bKb1"
    assert "to-tag" not in p
    assert (p["ICE"], p["DTLS"], p["transport-protocol"], p["rtcp-mux"]) == ("remove", "off", "RTP/AVP", ["demux"])
    assert p["received-from"] == ["IP4", "198.51.100.20"]
    assert step.command.params["sdp"] == WEBRTC_SDP
    assert step.command.server is None  # the first offer goes to the configured order
    outcome = step.finish(ok())
    assert outcome.verdict is Verdict.REWRITTEN and not outcome.reject
    assert inv.body == b"v=0\r\nREWRITTEN\r\n"
    assert inv.header("content-length") == str(len(inv.body))
    assert inv.to_bytes().endswith(b"Content-Length: 16\r\n\r\nv=0\r\nREWRITTEN\r\n")
    assert media.active == 1 and media.metrics.anchored == 1

    ringing = response(inv, 183, "B", CALLEE_SDP)
    step = media.on_response(ringing, now=T0 + 1)
    assert step is not None and step.kind is StepKind.ANSWER
    p = params(step)
    assert (p["from-tag"], p["to-tag"], p["via-branch"]) == ("A", "B", "z9hG4bKb1")
    assert (p["ICE"], p["SDES"]) == ("force", ["off"]) and "DTLS" not in p  # rtpengine connects
    assert p["received-from"] == ["IP4", "10.0.0.5"]  # the callee's flow
    assert step.command.server == RTPENGINE  # the rtpengine that took the offer
    assert step.finish(ok(b"v=0\r\nANSWER\r\n")).verdict is Verdict.REWRITTEN
    assert ringing.body == b"v=0\r\nANSWER\r\n" and ringing.header("content-length") == "13"

    final = response(inv, 200, "B", CALLEE_SDP)
    step = media.on_response(final, now=T0 + 2)
    assert step is not None and step.command.name == "answer" and params(step)["to-tag"] == "B"
    step.finish(ok())

    ack = request("ACK", to_tag="B", branch="z9hG4bKack")
    assert media.on_request(ack, BROWSER, PHONE, now=T0 + 3) is None

    bye = request("BYE", to_tag="B", cseq=2, branch="z9hG4bKbye")
    step = media.on_request(bye, BROWSER, PHONE, now=T0 + 4)
    assert step is not None and step.kind is StepKind.DELETE
    assert step.command.dictionary() == {"command": "delete", "call-id": "call-1"}
    assert step.command.server == RTPENGINE
    assert step.finish(NgOk("ok")).verdict is Verdict.DONE
    assert len(media) == 0 and media.active == 0
    assert media.on_response(response(bye, 200, "B"), now=T0 + 5) is None


def test_two_phones_on_one_lan_are_left_alone() -> None:
    media = sessions()
    inv = request(body=PLAIN_SDP)
    assert media.on_request(inv, PHONE, PHONE2, now=T0) is None
    assert inv.body == PLAIN_SDP
    assert media.on_response(response(inv, 200, "B", CALLEE_SDP), now=T0) is None
    assert media.on_request(request("BYE", to_tag="B", cseq=2), PHONE, PHONE2, now=T0) is None
    assert len(media) == 0


def test_anchor_never_and_always() -> None:
    assert sessions(mode=AnchorMode.NEVER).on_request(request(body=WEBRTC_SDP), BROWSER, PHONE, now=T0) is None
    step = sessions(mode=AnchorMode.ALWAYS).on_request(request(body=PLAIN_SDP), PHONE, PHONE2, now=T0)
    assert step is not None and "transport-protocol" not in step.command.params


def test_other_methods_and_bodies_are_ignored() -> None:
    media = sessions()
    assert media.on_request(request("MESSAGE", body=b"hi", content_type="text/plain"), BROWSER, PHONE, now=T0) is None
    # a body that is not application/sdp (multipart) is left alone: a late offer then
    inv = request(body=b"--x\r\n", content_type="multipart/mixed;boundary=x")
    assert media.on_request(inv, BROWSER, PHONE, now=T0) is None
    assert "call-1" in media


# ------------------------------------------------------------------------------ late offer


def test_late_offer_offer_in_the_2xx_answer_in_the_ack() -> None:
    media = sessions()
    inv = request()  # no SDP
    assert media.on_request(inv, BROWSER, PHONE, now=T0) is None
    assert "call-1" in media and media.active == 0

    final = response(inv, 200, "B", CALLEE_SDP)
    step = media.on_response(final, now=T0 + 1)
    assert step is not None and step.kind is StepKind.OFFER
    p = params(step)
    # ng's from-tag is the offerer's: the callee's To tag
    assert (p["from-tag"], p["to-tag"], p["via-branch"]) == ("B", "A", "z9hG4bKb1")
    # the offer goes to the browser: WebRTC flags
    assert (p["ICE"], p["DTLS"], p["transport-protocol"]) == ("force", "passive", "UDP/TLS/RTP/SAVPF")
    assert p["rtcp-mux"] == ["offer", "require"]
    assert p["received-from"] == ["IP4", "10.0.0.5"]
    step.finish(ok(b"v=0\r\nOFFER\r\n"))
    assert final.body == b"v=0\r\nOFFER\r\n"

    ack = request("ACK", to_tag="B", body=WEBRTC_SDP, branch="z9hG4bKack")
    step = media.on_request(ack, BROWSER, PHONE, now=T0 + 2)
    assert step is not None and step.kind is StepKind.ANSWER
    p = params(step)
    assert (p["from-tag"], p["to-tag"], p["via-branch"]) == ("B", "A", "z9hG4bKb1")
    assert (p["ICE"], p["DTLS"]) == ("remove", "off")  # the answer goes to the phone
    assert step.command.server == RTPENGINE
    step.finish(ok(b"v=0\r\nANSWER\r\n"))
    assert ack.body == b"v=0\r\nANSWER\r\n"
    # an ACK without SDP (or for another dialog) needs nothing
    assert media.on_request(request("ACK", to_tag="B"), BROWSER, PHONE, now=T0) is None
    assert media.on_request(request("ACK", to_tag="Z", body=WEBRTC_SDP), BROWSER, PHONE, now=T0) is None


def test_late_offer_answer_failure_passes_the_ack() -> None:
    media = sessions(on_failure=FailurePolicy.REJECT)
    inv = request()
    media.on_request(inv, BROWSER, PHONE, now=T0)
    step = media.on_response(response(inv, 200, "B", CALLEE_SDP), now=T0)
    assert step is not None
    step.finish(ok())
    ack = request("ACK", to_tag="B", body=WEBRTC_SDP)
    step = media.on_request(ack, BROWSER, PHONE, now=T0)
    assert step is not None
    outcome = step.finish(NgUnavailable("no reply"))
    assert outcome.verdict is Verdict.PASSED and not outcome.reject  # an ACK cannot be refused
    assert ack.body == WEBRTC_SDP


# ------------------------------------------------------------------------------ forks


def test_fork_one_call_a_via_branch_per_fork_a_to_tag_per_answer() -> None:
    media = sessions()
    b1 = request(body=PLAIN_SDP, branch="z9hG4bKfork1")
    b2 = request(body=PLAIN_SDP, branch="z9hG4bKfork2")
    s1 = media.on_request(b1, PHONE, BROWSER, now=T0)
    s2 = media.on_request(b2, PHONE, BROWSER2, now=T0)
    assert s1 is not None and s2 is not None
    assert params(s1)["via-branch"] == "z9hG4bKfork1" and params(s2)["via-branch"] == "z9hG4bKfork2"
    assert params(s1)["from-tag"] == params(s2)["from-tag"] == "A"
    # each branch carries the caller's SDP, not the other branch's rewrite
    s1.finish(ok(b"v=0\r\nONE\r\n"))
    assert s2.command.params["sdp"] == PLAIN_SDP
    s2.finish(ok(b"v=0\r\nTWO\r\n"))
    assert len(media) == 1

    early = media.on_response(response(b1, 180, "X", WEBRTC_SDP), now=T0 + 1)
    won = media.on_response(response(b2, 200, "Y", WEBRTC_SDP), now=T0 + 2)
    assert early is not None and won is not None
    assert (params(early)["to-tag"], params(early)["via-branch"]) == ("X", "z9hG4bKfork1")
    assert (params(won)["to-tag"], params(won)["via-branch"]) == ("Y", "z9hG4bKfork2")
    assert params(won)["ICE"] == "remove"  # towards the caller, a desk phone
    # the proxy CANCELs fork 1; its 487 is not forwarded, the 200 was: the call stays
    assert media.on_cancel("call-1") is None
    bye = media.on_request(request("BYE", to_tag="Y", cseq=2), PHONE, BROWSER2, now=T0 + 3)
    assert bye is not None and bye.kind is StepKind.DELETE


def test_fork_won_by_a_branch_that_needs_no_rtpengine_deletes_the_call() -> None:
    media = sessions()
    b1 = request(body=PLAIN_SDP, branch="z9hG4bKfork1")  # to a browser: anchored
    b2 = request(body=PLAIN_SDP, branch="z9hG4bKfork2")  # to a phone on the LAN: not
    s1 = media.on_request(b1, PHONE, BROWSER, now=T0)
    assert s1 is not None
    s1.finish(ok())
    assert media.on_request(b2, PHONE, PHONE2, now=T0) is None
    assert b2.body == PLAIN_SDP
    final = response(b2, 200, "Y", CALLEE_SDP)
    step = media.on_response(final, now=T0 + 1)
    assert step is not None and step.kind is StepKind.DELETE
    assert final.body == CALLEE_SDP
    assert len(media) == 0


# ------------------------------------------------------------------------------ delete


def test_cancel_deletes_before_the_2xx_only() -> None:
    media = sessions()
    inv = request(body=WEBRTC_SDP)
    step = media.on_request(inv, BROWSER, PHONE, now=T0)
    assert step is not None
    step.finish(ok())
    cancel = request("CANCEL", cseq=1)
    step = media.on_request(cancel, BROWSER, PHONE, now=T0 + 1)
    assert step is not None and step.kind is StepKind.DELETE and len(media) == 0
    # the 487 that follows finds nothing to do
    assert media.on_response(response(inv, 487, "B"), now=T0 + 2) is None

    media = sessions()
    inv = request(body=WEBRTC_SDP)
    media.on_request(inv, BROWSER, PHONE, now=T0).finish(ok())  # type: ignore[union-attr]
    media.on_response(response(inv, 200, "B", CALLEE_SDP), now=T0).finish(ok())  # type: ignore[union-attr]
    assert media.on_request(request("CANCEL"), BROWSER, PHONE, now=T0) is None
    assert media.on_cancel("call-1") is None
    assert "call-1" in media


@pytest.mark.parametrize("status", [404, 486, 503, 603])
def test_final_failure_deletes(status: int) -> None:
    media = sessions()
    inv = request(body=WEBRTC_SDP)
    media.on_request(inv, BROWSER, PHONE, now=T0).finish(ok())  # type: ignore[union-attr]
    step = media.on_response(response(inv, status, "B"), now=T0 + 1)
    assert step is not None and step.kind is StepKind.DELETE
    assert step.finish(NgUnavailable("down")).verdict is Verdict.PASSED
    assert len(media) == 0


def test_a_final_response_built_here_deletes_too() -> None:
    """408 or 480 made by the proxy carries the caller's Via, not ours: no branch needed."""
    media = sessions()
    inv = request(body=WEBRTC_SDP)
    media.on_request(inv, BROWSER, PHONE, now=T0).finish(ok())  # type: ignore[union-attr]
    made = make_response(request(body=WEBRTC_SDP), 408, to_tag="proxy")
    made.pop_first_value("via")
    step = media.on_response(made, now=T0 + 180)
    assert step is not None and step.kind is StepKind.DELETE


def test_a_call_rtpengine_never_saw_needs_no_delete() -> None:
    media = sessions()
    media.on_request(request(), BROWSER, PHONE, now=T0)  # late offer, nothing sent yet
    assert "call-1" in media
    assert media.on_request(request("CANCEL"), BROWSER, PHONE, now=T0) is None
    assert len(media) == 0


# ------------------------------------------------------------------------------ in dialog


def confirmed(media: MediaSessions) -> Request:
    inv = request(body=WEBRTC_SDP)
    media.on_request(inv, BROWSER, PHONE, now=T0).finish(ok())  # type: ignore[union-attr]
    media.on_response(response(inv, 200, "B", CALLEE_SDP), now=T0).finish(ok())  # type: ignore[union-attr]
    return inv


def test_reinvite_from_the_callee() -> None:
    media = sessions()
    confirmed(media)
    # the callee (tag B) re-INVITEs the browser (tag A): From tag B, To tag A
    reinv = request(from_tag="B", to_tag="A", cseq=7, body=CALLEE_SDP, branch="z9hG4bKre")
    step = media.on_request(reinv, PHONE, BROWSER, now=T0 + 10)
    assert step is not None and step.kind is StepKind.OFFER
    p = params(step)
    assert (p["from-tag"], p["to-tag"]) == ("B", "A") and "via-branch" not in p
    assert (p["ICE"], p["transport-protocol"]) == ("force", "UDP/TLS/RTP/SAVPF")  # to the browser
    assert step.command.server == RTPENGINE
    step.finish(ok())
    step = media.on_response(response(reinv, 200, "A", WEBRTC_SDP), now=T0 + 11)
    assert step is not None and step.kind is StepKind.ANSWER
    p = params(step)
    assert (p["from-tag"], p["to-tag"]) == ("B", "A")
    assert (p["ICE"], p["DTLS"]) == ("remove", "off")  # the answer goes to the phone
    assert p["received-from"] == ["IP4", "198.51.100.20"]


def test_reinvite_failure_keeps_the_call() -> None:
    media = sessions()
    confirmed(media)
    reinv = request(cseq=2, to_tag="B", body=WEBRTC_SDP, branch="z9hG4bKre")
    media.on_request(reinv, BROWSER, PHONE, now=T0).finish(ok())  # type: ignore[union-attr]
    assert media.on_response(response(reinv, 491, "B"), now=T0) is None
    assert "call-1" in media
    # and a response to an exchange we do not know is none of our business
    assert media.on_response(response(request(cseq=9, to_tag="B"), 200, "B", CALLEE_SDP), now=T0) is None


def test_update_with_sdp() -> None:
    media = sessions()
    confirmed(media)
    update = request("UPDATE", to_tag="B", cseq=3, body=WEBRTC_SDP, branch="z9hG4bKup")
    step = media.on_request(update, BROWSER, PHONE, now=T0)
    assert step is not None and step.command.name == "offer" and params(step)["ICE"] == "remove"
    step.finish(ok())
    step = media.on_response(response(update, 200, "B", CALLEE_SDP), now=T0)
    assert step is not None and step.command.name == "answer" and params(step)["ICE"] == "force"
    # an UPDATE without SDP (a session refresh) needs nothing
    assert media.on_request(request("UPDATE", to_tag="B", cseq=4), BROWSER, PHONE, now=T0) is None


def test_reinvite_without_sdp_offer_in_the_2xx() -> None:
    media = sessions()
    confirmed(media)
    reinv = request(cseq=5, to_tag="B", branch="z9hG4bKre")
    assert media.on_request(reinv, BROWSER, PHONE, now=T0) is None
    step = media.on_response(response(reinv, 200, "B", CALLEE_SDP), now=T0)
    assert step is not None and step.kind is StepKind.OFFER
    assert (params(step)["from-tag"], params(step)["to-tag"]) == ("B", "A")
    assert params(step)["ICE"] == "force"  # towards the browser
    step.finish(ok())
    ack = request("ACK", cseq=5, to_tag="B", body=WEBRTC_SDP)
    step = media.on_request(ack, BROWSER, PHONE, now=T0)
    assert step is not None and step.kind is StepKind.ANSWER
    assert (params(step)["from-tag"], params(step)["to-tag"]) == ("B", "A")


# ------------------------------------------------------------------------------ failures


@pytest.mark.parametrize(
    "result",
    [NgUnavailable("no reply to 3 tries"), NgError("error", "Unknown call-id", RTPENGINE), NgOk("ok", None)],
)
def test_offer_failure_rejects_with_503(result: object, caplog: pytest.LogCaptureFixture) -> None:
    media = sessions(on_failure=FailurePolicy.REJECT)
    inv = request(body=WEBRTC_SDP)
    step = media.on_request(inv, BROWSER, PHONE, now=T0)
    assert step is not None
    with caplog.at_level(logging.WARNING, "sipserver.media"):
        outcome = step.finish(result)  # type: ignore[arg-type]
    assert outcome.reject and outcome.status == 503
    assert inv.body == WEBRTC_SDP
    assert "rejecting with 503" in caplog.text and "call-id=call-1" in caplog.text
    assert len(media) == 0 and media.metrics.failures == {"reject": 1}
    # the 503 going upstream finds no call, so no delete
    assert media.on_response(response(inv, 503, "x"), now=T0) is None


def test_offer_failure_passes_with_on_failure_pass(caplog: pytest.LogCaptureFixture) -> None:
    media = sessions(on_failure=FailurePolicy.PASS)
    inv = request(body=WEBRTC_SDP)
    step = media.on_request(inv, BROWSER, PHONE, now=T0)
    assert step is not None
    with caplog.at_level(logging.WARNING, "sipserver.media"):
        outcome = step.finish(NgUnavailable("no reply"))
    assert outcome.verdict is Verdict.PASSED and not outcome.reject
    assert inv.body == WEBRTC_SDP and "media.on_failure = pass" in caplog.text
    # the answer of that branch goes upstream untouched too
    assert media.on_response(response(inv, 200, "B", CALLEE_SDP), now=T0) is None
    assert media.metrics.failures == {"pass": 1}


def test_answer_failure_passes_even_with_reject() -> None:
    media = sessions(on_failure=FailurePolicy.REJECT)
    inv = request(body=WEBRTC_SDP)
    media.on_request(inv, BROWSER, PHONE, now=T0).finish(ok())  # type: ignore[union-attr]
    final = response(inv, 200, "B", CALLEE_SDP)
    step = media.on_response(final, now=T0)
    assert step is not None
    assert step.finish(NgUnavailable("gone")).verdict is Verdict.PASSED
    assert final.body == CALLEE_SDP


def test_reinvite_offer_failure_rejects_but_keeps_the_call() -> None:
    media = sessions()
    confirmed(media)
    reinv = request(cseq=2, to_tag="B", body=WEBRTC_SDP)
    step = media.on_request(reinv, BROWSER, PHONE, now=T0)
    assert step is not None and step.finish(NgUnavailable("x")).reject
    assert "call-1" in media


# ------------------------------------------------------------------------------ timers and limits


def test_unanswered_call_is_deleted_after_setup_timeout() -> None:
    media = sessions(setup_timeout=600.0, session_timeout=3600.0)
    media.on_request(request(body=WEBRTC_SDP), BROWSER, PHONE, now=T0).finish(ok())  # type: ignore[union-attr]
    assert media.next_deadline() == T0 + 600
    assert media.handle_timer(T0 + 599) == []
    (step,) = media.handle_timer(T0 + 600)
    assert step.kind is StepKind.DELETE and step.command.server == RTPENGINE
    assert len(media) == 0 and media.next_deadline() is None


def test_answered_call_lives_until_session_timeout_and_signalling_refreshes_it() -> None:
    media = sessions(setup_timeout=600.0, session_timeout=3600.0)
    confirmed(media)  # the 2xx at T0
    assert media.handle_timer(T0 + 600) == []  # re-armed for the answered call
    assert media.next_deadline() == T0 + 3600
    reinv = request(cseq=2, to_tag="B", body=WEBRTC_SDP)
    media.on_request(reinv, BROWSER, PHONE, now=T0 + 3000).finish(ok())  # type: ignore[union-attr]
    assert media.handle_timer(T0 + 3600) == []
    assert media.next_deadline() == T0 + 6600
    (step,) = media.handle_timer(T0 + 6600)
    assert step.command.dictionary() == {"command": "delete", "call-id": "call-1"}


def test_a_session_timeout_below_the_setup_timeout_fires_on_time() -> None:
    """Issue 18: an answered call's deadline can move *earlier* (session_timeout 30 s < setup
    600 s); its timer entry follows, and the superseded one leaves no second delete behind."""
    media = sessions(setup_timeout=600.0, session_timeout=30.0)
    confirmed(media)  # the 2xx at T0
    assert media.next_deadline() == T0 + 30
    assert media.handle_timer(T0 + 29) == []
    (step,) = media.handle_timer(T0 + 30)
    assert step.kind is StepKind.DELETE
    assert media.handle_timer(T0 + 600) == [] and media.next_deadline() is None


def test_ended_calls_leave_no_timer_behind() -> None:
    media = sessions()
    inv = request(body=WEBRTC_SDP)
    media.on_request(inv, BROWSER, PHONE, now=T0).finish(ok())  # type: ignore[union-attr]
    media.on_request(request("BYE", to_tag="B", cseq=2), BROWSER, PHONE, now=T0)
    assert media.next_deadline() is None


def test_session_limit() -> None:
    media = sessions(max_sessions=1)
    assert media.on_request(request(body=WEBRTC_SDP), BROWSER, PHONE, now=T0) is not None
    assert media.on_request(request(body=WEBRTC_SDP, call_id="call-2"), BROWSER, PHONE, now=T0) is None
    assert len(media) == 1


def test_a_second_initial_invite_with_the_same_call_id_is_not_anchored() -> None:
    media = sessions()
    media.on_request(request(body=WEBRTC_SDP), BROWSER, PHONE, now=T0)
    assert media.on_request(request(body=WEBRTC_SDP, from_tag="other"), BROWSER, PHONE, now=T0) is None
    # the same INVITE's next branch (serial forking) is
    assert media.on_request(request(body=WEBRTC_SDP, branch="z9hG4bKb2"), BROWSER, PHONE, now=T0) is not None


def test_end_call_and_settings_from_a_config_section() -> None:
    media = sessions()
    media.on_request(request(body=WEBRTC_SDP), BROWSER, PHONE, now=T0).finish(ok())  # type: ignore[union-attr]
    step = media.end_call("call-1", "dialog gone")
    assert step is not None and step.kind is StepKind.DELETE
    assert media.end_call("call-1", "again") is None

    class Section:
        anchor = "always"
        on_failure = "pass"
        session_timeout = 60.0

    settings = MediaSettings.from_section(Section())
    assert settings == MediaSettings(AnchorMode.ALWAYS, FailurePolicy.PASS, 60.0)


def test_metrics_rows() -> None:
    media = sessions()
    confirmed(media)
    media.metrics.request("offer")
    media.metrics.round_trip(0.0007)
    media.metrics.error("offer", "timeout")
    rows = {name: (kind, samples) for name, kind, _, samples in media.metrics.rows(active=media.active)}
    assert rows["sipserver_media_sessions"] == ("gauge", [("", (), 1)])
    assert rows["sipserver_media_sessions_anchored_total"][1] == [("", (), 1)]
    assert rows["sipserver_media_ng_requests_total"][1] == [("", (("command", "offer"),), 1)]
    assert rows["sipserver_media_ng_errors_total"][1] == [("", (("command", "offer"), ("kind", "timeout")), 1)]
    kind, samples = rows["sipserver_media_ng_rtt_seconds"]
    assert kind == "histogram"
    buckets = {labels[0][1]: value for suffix, labels, value in samples if suffix == "_bucket"}
    assert buckets["0.0005"] == 0 and buckets["0.001"] == 1 and buckets["+Inf"] == 1
    assert ("_count", (), 1) in samples


def test_a_parsed_message_is_rewritten_on_the_wire() -> None:
    """A received message serialises from its raw bytes until edited: the new body and its
    Content-Length (compact ``l`` here) must both reach the wire."""
    raw = (
        b"INVITE sip:bob@10.0.0.6 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKp\r\n"
        b"Via: " + CALLER_VIA.encode() + b"\r\nFrom: <sip:a@x>;tag=A\r\nTo: <sip:b@x>\r\n"
        b"Call-ID: parsed\r\nCSeq: 1 INVITE\r\nc: application/sdp\r\nl: " + str(len(WEBRTC_SDP)).encode()
        + b"\r\n\r\n" + WEBRTC_SDP
    )
    inv = parse_message(raw)
    assert isinstance(inv, Request)
    media = sessions()
    step = media.on_request(inv, BROWSER, PHONE, now=T0)
    assert step is not None and step.command.params["via-branch"] == "z9hG4bKp"
    step.finish(ok(b"v=0\r\nNEW\r\n"))
    wire = inv.to_bytes()
    assert wire.endswith(b"\r\n\r\nv=0\r\nNEW\r\n")
    again = parse_message(wire)
    assert again.body == b"v=0\r\nNEW\r\n" and again.header("content-length") == "10"
    assert wire.count(b"l: ") + wire.count(b"Content-Length: ") == 1


# ------------------------------------------------------------------------------ any order

EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["invite", "reinvite", "update", "ack", "prack", "bye", "cancel", "resp", "timer"]),
        st.sampled_from(["z9hG4bKb1", "z9hG4bKb2"]),  # fork
        st.sampled_from([None, "B", "C"]),  # to-tag
        st.sampled_from([100, 180, 183, 200, 202, 408, 486, 491]),
        st.booleans(),  # with SDP
        st.sampled_from(["ok", "error", "unavailable", "nosdp"]),  # what rtpengine does
        st.booleans(),  # the sender is the caller
    ),
    max_size=25,
)
RESULTS = {
    "ok": ok(),
    "error": NgError("error", "nope", RTPENGINE),
    "unavailable": NgUnavailable("down"),
    "nosdp": NgOk("ok", None),
}


@settings(max_examples=300, deadline=None)
@given(EVENTS, st.sampled_from(list(FailurePolicy)), st.sampled_from(list(AnchorMode)))
def test_any_event_order_is_handled(events: list[tuple[object, ...]], policy: FailurePolicy, mode: AnchorMode) -> None:
    """Whatever order SIP events come in (retransmissions, strays, races with CANCEL), the state
    machine never raises, issues only ping-free ng commands of the right shape, keeps at most one
    record per Call-ID and ends with no timer for a call it forgot."""
    media = sessions(on_failure=policy, mode=mode)
    now = T0
    last: Request | None = None
    for kind, branch, to_tag, status, with_sdp, result, from_caller in events:
        now += 1.0
        body = (WEBRTC_SDP if from_caller else CALLEE_SDP) if with_sdp else b""
        src, dst = (BROWSER, PHONE) if from_caller else (PHONE, BROWSER)
        tags = {"from_tag": "A", "to_tag": to_tag} if from_caller else {"from_tag": to_tag or "B", "to_tag": "A"}
        step: MediaStep | None
        if kind == "timer":
            steps = media.handle_timer(now + 10**6)
            assert all(s.kind is StepKind.DELETE for s in steps)
            for s in steps:
                s.finish(RESULTS[result])  # type: ignore[arg-type]
            assert len(media) == 0 and media.next_deadline() is None
            continue
        if kind == "resp":
            if last is None:
                continue
            resp = response(last, status, to_tag, body)
            step = media.on_response(resp, now=now)
        else:
            method = {"invite": "INVITE", "reinvite": "INVITE", "update": "UPDATE", "ack": "ACK", "prack": "PRACK", "bye": "BYE", "cancel": "CANCEL"}[kind]  # type: ignore[index]
            if kind == "invite":
                tags = {"from_tag": "A", "to_tag": None}
            req = request(method, body=body, branch=branch, cseq=int(now) if kind in ("reinvite", "update", "bye") else 1, **tags)  # type: ignore[arg-type]
            step = media.on_request(req, src, dst, now=now)
            if method in ("INVITE", "UPDATE"):
                last = req
        assert len(media) <= 1
        if step is None:
            continue
        assert step.command.name in ("offer", "answer", "delete")
        assert step.command.call_id == "call-1"
        if step.command.name != "delete":
            assert isinstance(step.command.params["sdp"], bytes) and step.command.params["from-tag"]
        if step.command.name == "answer":
            assert step.command.params["to-tag"]
        outcome = step.finish(RESULTS[result])  # type: ignore[arg-type]
        if outcome.reject:
            assert policy is FailurePolicy.REJECT and step.kind is StepKind.OFFER
    if len(media) == 0:
        assert media.next_deadline() is None
