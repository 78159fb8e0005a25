"""The few SDP facts media anchoring needs (sipserver/media/sdp.py): protos, c= addresses, ICE
(RFC 8839 a=ice-ufrag), DTLS (RFC 8122 a=fingerprint), rtcp-mux (RFC 5761)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sipserver.media.sdp import MAX_SDP, is_sdp_type, summarize

# What a browser offers (trimmed Chrome offer): c=0.0.0.0, ICE, DTLS fingerprint, rtcp-mux.
WEBRTC = (
    b"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    b"a=group:BUNDLE 0\r\na=fingerprint:sha-256 7B:8B:F0:65\r\n"
    b"m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\n"
    b"a=candidate:1 1 udp 2122260223 192.168.1.20 54321 typ host\r\n"
    b"a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=setup:actpass\r\na=mid:0\r\n"
    b"a=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n"
)
PLAIN = (
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n"
    b"m=video 0 RTP/AVP 96\r\nc=IN IP4 10.9.9.9\r\n"
)


def test_webrtc_offer() -> None:
    s = summarize(WEBRTC)
    assert s is not None
    assert s.protos == ("UDP/TLS/RTP/SAVPF",)
    (m,) = s.media
    assert (m.kind, m.port, m.connection, m.ice_ufrag, m.rtcp_mux) == ("audio", 9, "0.0.0.0", "abcd", True)
    assert m.fingerprint == "sha-256 7B:8B:F0:65"  # session level applies to the stream
    assert s.webrtc and s.has_ice and s.has_fingerprint
    assert s.connection_address is None  # 0.0.0.0 names no address


def test_plain_offer() -> None:
    s = summarize(PLAIN)
    assert s is not None
    assert s.protos == ("RTP/AVP", "RTP/AVP")
    assert s.session_connection == "10.0.0.5"
    audio, video = s.media
    assert audio.connection == "10.0.0.5" and video.connection == "10.9.9.9"
    assert not video.active
    assert not s.webrtc and not s.has_ice and not s.has_fingerprint
    assert s.connection_address == "10.0.0.5"  # the disabled video stream does not count


def test_savpf_without_ice_or_fingerprint_is_not_webrtc() -> None:
    s = summarize(b"v=0\nc=IN IP4 10.0.0.1\nm=audio 5 RTP/SAVPF 0\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x\n")
    assert s is not None and not s.webrtc
    t = summarize(b"v=0\nm=audio 5 RTP/SAVPF 0\na=ice-ufrag:u\n")  # LF line ends, media-level ICE
    assert t is not None and t.webrtc


def test_ipv6_and_multicast_ttl() -> None:
    s = summarize(b"v=0\r\nm=audio 1 RTP/AVP 0\r\nc=IN IP6 2001:db8::5\r\nm=audio 2 RTP/AVP 0\r\nc=IN IP4 224.2.1.1/127\r\n")
    assert s is not None
    assert [m.connection for m in s.media] == ["2001:db8::5", "224.2.1.1"]


def test_not_sdp() -> None:
    assert summarize(b"") is None
    assert summarize(b"hello") is None
    assert summarize(b"v=0\r\n" + b"a=x\r\n" * (MAX_SDP // 5)) is None  # too big for one datagram
    odd = summarize(b"v=0\r\nm=\r\nm=audio\r\nc=IN\r\nm=audio 99999999 X\r\nzz\r\n")
    assert odd is not None and [m.port for m in odd.media] == [0, 0, 0]


@given(st.binary(max_size=300))
def test_summarize_never_raises(data: bytes) -> None:
    summarize(data)
    summarize(b"v=0\r\n" + data)


def test_content_type() -> None:
    assert is_sdp_type("application/sdp")
    assert is_sdp_type("Application/SDP; charset=utf-8")
    assert not is_sdp_type("multipart/mixed;boundary=x")
    assert not is_sdp_type(None)
