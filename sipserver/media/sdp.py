"""Just enough SDP (RFC 8866) to plan media anchoring. Sans-IO.

The planner needs a handful of facts about a body, not a model of it: each m= line's media,
port and transport protocol, its effective c= address (media level over session level), and
whether ICE (``a=ice-ufrag``, RFC 8839) and DTLS-SRTP (``a=fingerprint``, RFC 8122) are offered,
plus ``a=rtcp-mux`` (RFC 5761). rtpengine does the real SDP work.

Invariants:
- ``summarize`` never raises on any bytes: a body that is not SDP (no ``v=`` first line, or
  larger than ``MAX_SDP``) gives None; unknown or malformed lines are skipped.
- One pass over the lines, linear in the body.
"""

from __future__ import annotations

import ipaddress

import attrs

__all__ = ["MAX_SDP", "MediaSection", "SdpSummary", "is_sdp_type", "summarize"]

MAX_SDP = 65536  # an ng request is one UDP datagram; a body this big cannot be anchored anyway

# RFC 8866 §5.14 transport protocols that mean the WebRTC media stack (JSEP, RFC 8829 §5.1.2).
WEBRTC_PROTOS = frozenset({"UDP/TLS/RTP/SAVPF", "RTP/SAVPF", "TCP/DTLS/RTP/SAVPF"})


@attrs.frozen
class MediaSection:
    kind: str  # audio, video, application...
    port: int
    proto: str
    connection: str | None  # effective c= address (media level, else session level)
    ice_ufrag: str | None  # effective a=ice-ufrag
    fingerprint: str | None  # effective a=fingerprint (hash function and value)
    rtcp_mux: bool

    @property
    def active(self) -> bool:
        """Port 0 rejects or disables the stream (RFC 3264 §6)."""
        return self.port != 0


@attrs.frozen
class SdpSummary:
    media: tuple[MediaSection, ...]
    session_connection: str | None

    @property
    def protos(self) -> tuple[str, ...]:
        return tuple(m.proto for m in self.media)

    @property
    def has_ice(self) -> bool:
        return any(m.ice_ufrag for m in self.media if m.active)

    @property
    def has_fingerprint(self) -> bool:
        return any(m.fingerprint for m in self.media if m.active)

    @property
    def webrtc(self) -> bool:
        """A WebRTC-style body: an (UDP/TLS/)RTP/SAVPF stream with ICE or a DTLS fingerprint."""
        return any(
            m.proto.upper() in WEBRTC_PROTOS and (m.ice_ufrag or m.fingerprint)
            for m in self.media
            if m.active
        )

    @property
    def connection_address(self) -> str | None:
        """The c= address of the first active stream that names a real one (not 0.0.0.0/::,
        which means hold or "see ICE"); None when no stream does."""
        for m in self.media:
            if m.active and m.connection and not _unspecified(m.connection):
                return m.connection
        return None


def _unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def is_sdp_type(content_type: str | None) -> bool:
    """Content-Type ``application/sdp`` (parameters and case ignored)."""
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/sdp"


def _address(value: str) -> str | None:
    """``IN IP4 192.0.2.1/127`` -> ``192.0.2.1``."""
    parts = value.split()
    if len(parts) < 3:
        return None
    return parts[2].split("/", 1)[0] or None


@attrs.define
class _Section:
    kind: str
    port: int
    proto: str
    connection: str | None = None
    ice_ufrag: str | None = None
    fingerprint: str | None = None
    rtcp_mux: bool = False


def _m_line(value: str) -> _Section:
    parts = value.split()
    port_text = parts[1].split("/", 1)[0] if len(parts) > 1 else ""
    port = int(port_text) if port_text.isdigit() and len(port_text) <= 5 else 0
    return _Section(parts[0] if parts else "", port, parts[2] if len(parts) > 2 else "")


def summarize(body: bytes) -> SdpSummary | None:
    if not body or len(body) > MAX_SDP:
        return None
    lines = body.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    if not lines[0].strip().startswith("v="):
        return None
    session = _Section("", 0, "")  # session-level c=, ice-ufrag and fingerprint
    sections: list[_Section] = []
    current = session
    for line in lines:
        line = line.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            current = _m_line(value)
            sections.append(current)
        elif kind == "c":
            current.connection = _address(value)
        elif kind == "a":
            name, _, attr_value = value.partition(":")
            if name == "ice-ufrag":
                current.ice_ufrag = attr_value.strip() or None
            elif name == "fingerprint":
                current.fingerprint = attr_value.strip() or None
            elif name == "rtcp-mux":
                current.rtcp_mux = True
    media = tuple(
        MediaSection(
            s.kind,
            s.port,
            s.proto,
            s.connection or session.connection,
            s.ice_ufrag or session.ice_ufrag,
            s.fingerprint or session.fingerprint,
            s.rtcp_mux,
        )
        for s in sections
    )
    return SdpSummary(media, session.connection)
