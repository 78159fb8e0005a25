"""Whether a call's media goes through rtpengine, and with which flags per leg. Sans-IO.

A call has two legs: the caller's and, per branch, the callee's. Each leg is classified
(``classify``) from what the proxy knows of it: the transport of its flow, its SDP when there is
one, where its SIP comes from and what it claims as its address. Then ``decide`` says whether to
anchor, and ``flags_towards`` which ng options each direction gets.

Rules (issue 18, DESIGN.md "Media (rtpengine)"):
- Profile: a leg is WEBRTC when its flow is WS/WSS (RFC 7118: browsers) or its SDP is
  WebRTC-style (UDP/TLS/RTP/SAVPF or RTP/SAVPF with a=ice-ufrag or a=fingerprint, JSEP RFC 8829
  §5.1.2); else PLAIN (a desk phone or a trunk: RTP/AVP).
- Behind NAT: only a party that sends its SIP itself (``Leg.direct``: one Via, or a registered
  flow of ours) can be judged. It is behind NAT when the address it claims (its Contact host, or
  the c= address of its SDP) is an IP literal other than the address its SIP comes from, or, with
  no Contact host known, when it is an implicit flow (registered without outbound, issue 17).
  0.0.0.0 and host names prove nothing. NAT matters for PLAIN legs only: WebRTC legs do ICE.
- ``AnchorMode.AUTO`` anchors when the legs' profiles differ (rtpengine translates between
  DTLS-SRTP/ICE and plain RTP) or when a PLAIN party is behind NAT (rtpengine learns the real
  media address); two plain phones on one LAN, or two browsers, keep their SDP untouched.
  ``ALWAYS`` anchors every call with SDP, ``NEVER`` none.
- Flags describe the side the SDP goes to: towards a browser ICE=force, SDES off,
  UDP/TLS/RTP/SAVPF and rtcp-mux offered and required (RFC 8829 §5.1.3: browsers require
  rtcp-mux), and in offers DTLS=passive (the browser connects); an answer to a browser leaves the
  DTLS role to rtpengine, which connects (setup:active, RFC 5763 §5) as it decided when the
  browser's actpass offer came in (forcing passive there leaves both sides waiting: issue 18's
  Chromium test); towards a plain phone ICE=remove and, when translating from WebRTC, RTP/AVP, DTLS off
  and rtcp-mux demuxed. Between legs of one profile the transport protocol is left alone, so an
  SDES call between two desk phones stays encrypted. ``received-from`` always names the sender's
  source address; ``SIP-source-address`` is added when the sender is a plain party behind NAT,
  so rtpengine sends to the NAT's public address until it learns the port from the media.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Protocol

import attrs

from ..outbound.flow import Address, Flow, Transport
from ..sip import ParseError, Request, SipURI, parse_uri
from .ng import NgFlags
from .sdp import SdpSummary

__all__ = [
    "AnchorDecision",
    "AnchorMode",
    "BindingLike",
    "Leg",
    "LegView",
    "MediaProfile",
    "classify",
    "contact_host",
    "decide",
    "flags_towards",
]

WEBRTC_TRANSPORT_PROTOCOL = "UDP/TLS/RTP/SAVPF"  # JSEP (RFC 8829 §5.1.2) offers exactly this
PLAIN_TRANSPORT_PROTOCOL = "RTP/AVP"
REPLACE = ("origin", "session-connection")


class AnchorMode(enum.Enum):
    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


class MediaProfile(enum.Enum):
    WEBRTC = "webrtc"  # ICE, DTLS-SRTP, RTP/SAVPF, rtcp-mux
    PLAIN = "plain"  # RTP/AVP (or SDES RTP/SAVP), no ICE


class BindingLike(Protocol):
    """What ``Leg.target`` reads of a ``sipserver.registrar.binding.Binding``."""

    @property
    def contact_uri(self) -> str: ...
    @property
    def outbound(self) -> bool: ...
    @property
    def flow_token(self) -> str | None: ...


@attrs.frozen
class Leg:
    """One party of a call as the proxy sees it.

    ``source`` is where its SIP comes from (the flow's remote address); ``contact_host`` the host
    it claims (its Contact, or its registered contact); ``implicit`` that its binding is an
    implicit flow (issue 17); ``direct`` that the peer on the flow is the party itself, not
    another proxy or a trunk (then addresses prove nothing about NAT)."""

    transport: Transport
    source: Address
    contact_host: str | None = None
    implicit: bool = False
    direct: bool = True

    @classmethod
    def from_flow(
        cls, flow: Flow, *, contact_host: str | None = None, implicit: bool = False, direct: bool = True
    ) -> Leg:
        return cls(flow.transport, flow.remote, contact_host, implicit, direct)

    @classmethod
    def target(cls, flow: Flow, binding: BindingLike | None = None, *, direct: bool = True) -> Leg:
        """The callee side of a branch going down ``flow``. ``binding``: the registrar's binding
        the branch came from (its Contact host; an implicit flow when it is ours without
        outbound; a binding behind another proxy's Path is not ``direct``). Without one (a Route
        token in a dialog, a trunk), ``direct`` says whether the peer is the party itself."""
        if binding is None:
            return cls(flow.transport, flow.remote, None, False, direct)
        ours = binding.flow_token is not None
        return cls(flow.transport, flow.remote, contact_host(binding.contact_uri), ours and not binding.outbound, ours)

    @classmethod
    def sender(cls, request: Request, flow: Flow) -> Leg:
        """The party that sent ``request`` (as received: before our Via) over ``flow``."""
        try:
            direct = len(request.vias) == 1
        except ParseError:
            direct = False
        try:
            contacts = request.contacts
        except ParseError:
            contacts = []
        host = None
        if contacts and not contacts[0].star:
            host = contact_host(contacts[0].uri_text)
        return cls(flow.transport, flow.remote, host, False, direct)


def contact_host(uri_text: str) -> str | None:
    """The host of a SIP URI (None if it is not one, or does not parse)."""
    try:
        uri = parse_uri(uri_text)
    except ParseError:
        return None
    return uri.host if isinstance(uri, SipURI) else None


@attrs.frozen
class LegView:
    """A leg classified: its media profile and whether it is a plain party behind NAT."""

    leg: Leg
    profile: MediaProfile
    behind_nat: bool
    why: str  # what the verdict rests on, for logs

    @property
    def webrtc(self) -> bool:
        return self.profile is MediaProfile.WEBRTC


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _claims_other(claimed: str | None, source: Address) -> bool:
    ip, src = _ip(claimed), _ip(source[0])
    return ip is not None and src is not None and not ip.is_unspecified and ip != src


def classify(leg: Leg, sdp: SdpSummary | None = None) -> LegView:
    reasons: list[str] = []
    if leg.transport in (Transport.WS, Transport.WSS):
        profile = MediaProfile.WEBRTC
        reasons.append(f"{leg.transport.value} transport")
    elif sdp is not None and sdp.webrtc:
        profile = MediaProfile.WEBRTC
        reasons.append("WebRTC-style SDP (" + "/".join(sorted(set(sdp.protos))) + ")")
    else:
        profile = MediaProfile.PLAIN
        reasons.append(f"{leg.transport.value} transport")
    nat = False
    if profile is MediaProfile.PLAIN and leg.direct:
        c_addr = sdp.connection_address if sdp is not None else None
        if _claims_other(leg.contact_host, leg.source):
            nat = True
            reasons.append(f"Contact {leg.contact_host} behind {leg.source[0]}")
        elif _claims_other(c_addr, leg.source):
            nat = True
            reasons.append(f"c={c_addr} behind {leg.source[0]}")
        elif leg.implicit and leg.contact_host is None:
            nat = True
            reasons.append("implicit flow")
    return LegView(leg, profile, nat, ", ".join(reasons))


@attrs.frozen
class AnchorDecision:
    anchor: bool
    reason: str


def decide(mode: AnchorMode, caller: LegView, callee: LegView) -> AnchorDecision:
    if mode is AnchorMode.NEVER:
        return AnchorDecision(False, "media.anchor = never")
    if mode is AnchorMode.ALWAYS:
        return AnchorDecision(True, "media.anchor = always")
    if caller.profile is not callee.profile:
        return AnchorDecision(
            True, f"{caller.profile.value} caller ({caller.why}) to {callee.profile.value} callee ({callee.why})"
        )
    if caller.behind_nat:
        return AnchorDecision(True, f"caller behind NAT ({caller.why})")
    if callee.behind_nat:
        return AnchorDecision(True, f"callee behind NAT ({callee.why})")
    return AnchorDecision(False, f"both {caller.profile.value}, no NAT")


def _family(host: str) -> str:
    return "IP6" if ":" in host else "IP4"


def flags_towards(recipient: MediaProfile, sender: LegView, *, offer: bool) -> NgFlags:
    """The ng options for an offer (``offer``) or answer that ``sender`` sends and a party of
    profile ``recipient`` receives."""
    translate = recipient is not sender.profile
    flags: list[str] = []
    if sender.behind_nat:
        flags.append("SIP-source-address")
    received_from = (_family(sender.leg.source[0]), sender.leg.source[0])
    if recipient is MediaProfile.WEBRTC:
        if offer:
            flags.append("generate-mid")
        return NgFlags(
            transport_protocol=WEBRTC_TRANSPORT_PROTOCOL if offer and translate else None,
            ice="force",
            dtls="passive" if offer else None,
            sdes=("off",),
            rtcp_mux=("offer", "require") if offer else (),
            flags=tuple(flags),
            replace=REPLACE,
            received_from=received_from,
        )
    return NgFlags(
        transport_protocol=PLAIN_TRANSPORT_PROTOCOL if offer and translate else None,
        ice="remove",
        dtls="off" if translate else None,
        rtcp_mux=("demux",) if offer and translate else (),
        flags=tuple(flags),
        replace=REPLACE,
        received_from=received_from,
    )
