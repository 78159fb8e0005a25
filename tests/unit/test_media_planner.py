"""Whether a call is anchored and with which ng flags per leg (sipserver/media/planner.py).

Issue 18: with anchor = auto a call is anchored when its legs differ in media profile (a browser
on one side: WS/WSS or an RTP/SAVPF offer with ICE) or a plain party is behind NAT; two plain
phones on one LAN, or two browsers, keep their SDP. Flags towards a browser: ICE=force,
DTLS=passive in offers (answers leave the role to rtpengine), UDP/TLS/RTP/SAVPF, rtcp-mux offered; towards a plain phone: ICE=remove, RTP/AVP,
DTLS off, rtcp-mux demux."""

from __future__ import annotations

import pytest

from sipserver.media.planner import (
    AnchorMode,
    Leg,
    MediaProfile,
    classify,
    contact_host,
    decide,
    flags_towards,
)
from sipserver.media.sdp import SdpSummary, summarize
from sipserver.outbound.flow import Flow, Transport
from sipserver.sip import Request, make_request

WEBRTC_SDP = summarize(
    b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    b"c=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=fingerprint:sha-256 AB:CD\r\na=rtcp-mux\r\n"
)


def plain_sdp(address: str) -> SdpSummary | None:
    return summarize(f"v=0\r\no=- 1 1 IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n".encode())


BROWSER = Leg(Transport.WSS, ("198.51.100.20", 50123))
LAN_PHONE_A = Leg(Transport.UDP, ("10.0.0.5", 5060), contact_host="10.0.0.5")
LAN_PHONE_B = Leg(Transport.UDP, ("10.0.0.6", 5060), contact_host="10.0.0.6")
NAT_PHONE = Leg(Transport.UDP, ("203.0.113.5", 40112), contact_host="192.168.1.10", implicit=True)


# ------------------------------------------------------------------------------ the matrix


def test_browser_calls_a_desk_phone() -> None:
    caller, callee = classify(BROWSER, WEBRTC_SDP), classify(LAN_PHONE_A)
    assert caller.profile is MediaProfile.WEBRTC and callee.profile is MediaProfile.PLAIN
    decision = decide(AnchorMode.AUTO, caller, callee)
    assert decision.anchor and "webrtc caller" in decision.reason
    offer = flags_towards(callee.profile, caller, offer=True)
    assert offer.transport_protocol == "RTP/AVP"
    assert (offer.ice, offer.dtls, offer.rtcp_mux) == ("remove", "off", ("demux",))
    assert offer.received_from == ("IP4", "198.51.100.20")
    assert "SIP-source-address" not in offer.flags  # a browser is not judged for NAT: ICE
    answer = flags_towards(caller.profile, callee, offer=False)
    # an answer leaves the DTLS role to rtpengine: it connects (setup:active, RFC 5763 §5), the
    # role it took when the browser's actpass offer came; asking passive here deadlocks Chrome
    assert (answer.ice, answer.dtls, answer.sdes) == ("force", None, ("off",))
    assert answer.transport_protocol is None  # rtpengine answers with the protocol offered
    assert answer.rtcp_mux == ()  # rtcp-mux is settled in the offer (rtpengine's demux)
    assert answer.received_from == ("IP4", "10.0.0.5")


def test_desk_phone_calls_a_browser() -> None:
    caller, callee = classify(LAN_PHONE_A, plain_sdp("10.0.0.5")), classify(BROWSER)
    assert decide(AnchorMode.AUTO, caller, callee).anchor
    offer = flags_towards(callee.profile, caller, offer=True)
    assert offer.transport_protocol == "UDP/TLS/RTP/SAVPF"
    assert (offer.ice, offer.dtls, offer.sdes) == ("force", "passive", ("off",))
    assert offer.rtcp_mux == ("offer", "require")
    assert "generate-mid" in offer.flags
    assert offer.replace == ("origin", "session-connection")
    answer = flags_towards(caller.profile, callee, offer=False)
    assert (answer.ice, answer.dtls, answer.transport_protocol) == ("remove", "off", None)


def test_webrtc_style_sdp_over_tls_counts_as_a_browser() -> None:
    softphone = Leg(Transport.TLS, ("198.51.100.30", 5061), contact_host="198.51.100.30")
    view = classify(softphone, WEBRTC_SDP)
    assert view.profile is MediaProfile.WEBRTC and "WebRTC-style SDP" in view.why
    assert decide(AnchorMode.AUTO, view, classify(LAN_PHONE_A)).anchor


def test_two_phones_on_one_lan_are_not_anchored() -> None:
    caller, callee = classify(LAN_PHONE_A, plain_sdp("10.0.0.5")), classify(LAN_PHONE_B)
    assert not caller.behind_nat and not callee.behind_nat
    decision = decide(AnchorMode.AUTO, caller, callee)
    assert not decision.anchor and decision.reason == "both plain, no NAT"


def test_two_browsers_are_not_anchored() -> None:
    other = Leg(Transport.WS, ("192.0.2.99", 40000), contact_host="abc.invalid")
    caller, callee = classify(BROWSER, WEBRTC_SDP), classify(other)
    assert not decide(AnchorMode.AUTO, caller, callee).anchor


def test_natted_phone_is_anchored_in_auto() -> None:
    caller = classify(NAT_PHONE, plain_sdp("192.168.1.10"))
    assert caller.behind_nat and "192.168.1.10 behind 203.0.113.5" in caller.why
    decision = decide(AnchorMode.AUTO, caller, classify(LAN_PHONE_B))
    assert decision.anchor and "caller behind NAT" in decision.reason
    offer = flags_towards(MediaProfile.PLAIN, caller, offer=True)
    assert "SIP-source-address" in offer.flags and offer.received_from == ("IP4", "203.0.113.5")
    # between two plain legs nothing is translated: an SDES call stays RTP/SAVP
    assert offer.transport_protocol is None and offer.dtls is None and offer.rtcp_mux == ()
    assert offer.ice == "remove"
    # and the callee behind NAT anchors the call just the same
    assert decide(AnchorMode.AUTO, classify(LAN_PHONE_B), caller).reason.startswith("callee behind NAT")


def test_nat_evidence() -> None:
    src = ("203.0.113.5", 5060)
    # the SDP c= address alone
    assert classify(Leg(Transport.UDP, src), plain_sdp("192.168.1.10")).behind_nat
    # the Contact host alone
    assert classify(Leg(Transport.TCP, src, contact_host="192.168.1.10")).behind_nat
    # an implicit flow whose contact we do not know
    assert classify(Leg(Transport.UDP, src, implicit=True)).behind_nat
    # an implicit flow whose contact is its source: a phone on a LAN without outbound
    assert not classify(Leg(Transport.UDP, src, contact_host="203.0.113.5", implicit=True)).behind_nat
    # proofs of nothing: 0.0.0.0 (hold), host names, the same address, IPv4-mapped IPv6
    assert not classify(Leg(Transport.UDP, src), plain_sdp("0.0.0.0")).behind_nat
    assert not classify(Leg(Transport.UDP, src, contact_host="pbx.example.com")).behind_nat
    assert not classify(Leg(Transport.UDP, ("::ffff:203.0.113.5", 5060), contact_host="203.0.113.5")).behind_nat
    # a leg behind another proxy or trunk: its addresses say nothing about NAT
    trunk = Leg(Transport.UDP, ("192.0.2.1", 5060), contact_host="10.1.1.1", direct=False)
    assert not classify(trunk, plain_sdp("10.1.1.1")).behind_nat


@pytest.mark.parametrize(
    ("mode", "caller", "callee", "anchored"),
    [
        (AnchorMode.NEVER, BROWSER, LAN_PHONE_A, False),
        (AnchorMode.NEVER, NAT_PHONE, LAN_PHONE_A, False),
        (AnchorMode.ALWAYS, LAN_PHONE_A, LAN_PHONE_B, True),
        (AnchorMode.ALWAYS, BROWSER, BROWSER, True),
        (AnchorMode.AUTO, LAN_PHONE_A, LAN_PHONE_B, False),
        (AnchorMode.AUTO, BROWSER, BROWSER, False),
        (AnchorMode.AUTO, BROWSER, LAN_PHONE_A, True),
        (AnchorMode.AUTO, LAN_PHONE_A, BROWSER, True),
        (AnchorMode.AUTO, NAT_PHONE, LAN_PHONE_A, True),
        (AnchorMode.AUTO, LAN_PHONE_A, NAT_PHONE, True),
        (AnchorMode.AUTO, NAT_PHONE, BROWSER, True),
    ],
)
def test_modes(mode: AnchorMode, caller: Leg, callee: Leg, anchored: bool) -> None:
    assert decide(mode, classify(caller), classify(callee)).anchor is anchored


def test_two_browsers_anchored_always_keep_webrtc_flags() -> None:
    caller = classify(BROWSER, WEBRTC_SDP)
    offer = flags_towards(MediaProfile.WEBRTC, caller, offer=True)
    assert offer.transport_protocol is None  # already UDP/TLS/RTP/SAVPF
    assert (offer.ice, offer.dtls, offer.rtcp_mux) == ("force", "passive", ("offer", "require"))


def test_ipv6_sender() -> None:
    caller = classify(Leg(Transport.UDP, ("2001:db8::7", 5060), contact_host="2001:db8::7"))
    assert flags_towards(MediaProfile.PLAIN, caller, offer=True).received_from == ("IP6", "2001:db8::7")


# ------------------------------------------------------------------------------ legs


def _invite(vias: int, contact: str | None) -> Request:
    headers = [("Via", f"SIP/2.0/UDP 10.0.0.{i}:5060;branch=z9hG4bK{i}") for i in range(vias)]
    headers += [("From", "<sip:a@example.com>;tag=1"), ("To", "<sip:b@example.com>"), ("Call-ID", "x"), ("CSeq", "1 INVITE")]
    if contact is not None:
        headers.append(("Contact", contact))
    return make_request("INVITE", "sip:b@example.com", headers)


def test_leg_of_a_request_sender() -> None:
    flow = Flow(Transport.UDP, ("192.0.2.1", 5060), ("203.0.113.5", 40112))
    leg = Leg.sender(_invite(1, "<sip:a@192.168.1.10:5060>"), flow)
    assert leg == Leg(Transport.UDP, ("203.0.113.5", 40112), "192.168.1.10", False, True)
    via_proxy = Leg.sender(_invite(2, "<sip:a@192.168.1.10>"), flow)
    assert not via_proxy.direct
    assert Leg.sender(_invite(1, None), flow).contact_host is None
    assert Leg.sender(_invite(1, "<sip:a@[2001:db8::1]>"), flow).contact_host == "2001:db8::1"
    broken = Leg.sender(_invite(1, "<<<broken"), flow)
    assert broken.contact_host is None and broken.direct


def test_leg_from_flow_and_contact_host() -> None:
    flow = Flow(Transport.WS, ("192.0.2.1", 443), ("198.51.100.20", 50123), 7)
    assert Leg.from_flow(flow, contact_host="x.invalid") == Leg(Transport.WS, ("198.51.100.20", 50123), "x.invalid")
    assert contact_host("sip:bob@10.0.0.5:5062;transport=udp") == "10.0.0.5"
    assert contact_host("tel:+123") is None
    assert contact_host("nonsense") is None


def test_leg_of_a_branch_target_from_its_binding() -> None:
    from sipserver.registrar.binding import Binding, BindingKey
    from sipserver.sip import parse_sip_uri

    flow = Flow(Transport.UDP, ("192.0.2.1", 5060), ("203.0.113.5", 40112))
    contact = "sip:bob@192.168.1.10:5060"

    def binding(flow_token: str | None = None, outbound: bool = False) -> Binding:
        key = BindingKey.for_contact("sip:bob@example.com", parse_sip_uri(contact))
        return Binding(
            key=key, aor="sip:bob@example.com", contact_uri=contact, expires_at=2000.0, call_id="cid", cseq=1,
            flow_token=flow_token, outbound=outbound,
        )

    implicit = Leg.target(flow, binding(flow_token="tok"))
    assert implicit == Leg(Transport.UDP, ("203.0.113.5", 40112), "192.168.1.10", True, True)
    assert classify(implicit).behind_nat
    outbound = Leg.target(flow, binding(flow_token="tok", outbound=True))
    assert not outbound.implicit and outbound.direct and classify(outbound).behind_nat
    external = Leg.target(flow, binding())  # behind another proxy's Path: no token of ours
    assert not external.direct and not classify(external).behind_nat
    assert Leg.target(flow) == Leg(Transport.UDP, ("203.0.113.5", 40112))
    assert not Leg.target(flow, direct=False).direct
