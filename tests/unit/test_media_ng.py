"""The ng protocol (sipserver/media/ng.py): framing, commands, typed replies, query statistics.

Reference: rtpengine docs/ng_control_protocol.md. QUERY_REPLY is a datagram recorded from
rtpengine 10.5.3.5 (Debian 12) for a two-party RTP/AVP call; note its unsorted keys."""

from __future__ import annotations

import pytest

from sipserver.media.bencode import decode, encode
from sipserver.media.ng import (
    NgAddress,
    NgCommand,
    NgError,
    NgFlags,
    NgOk,
    NgProtocolError,
    NgRequest,
    answer,
    decode_reply,
    delete,
    describe,
    frame,
    new_cookie,
    offer,
    parse_ng_address,
    parse_query,
    ping,
    query,
    split_message,
)

QUERY_REPLY = (
    b'q3 d7:createdi1796479442e10:created_usi944870e11:last signali1796479442e4:SSRCde4:tagsd2'
    b':ftd3:tag2:ft7:createdi1796479442e13:subscriptionsld3:tag2:tt4:type12:offer/answeree11:s'
    b'ubscribersld3:tag2:tt4:type12:offer/answeree6:mediasld5:indexi1e4:type5:audio8:protocol7'
    b':RTP/AVP7:streamsld10:local porti40040e13:local address9:127.0.0.16:family4:IPv48:endpoi'
    b'ntd6:family4:IPv47:address8:10.0.0.54:porti4000ee19:advertised endpointd6:family4:IPv47:'
    b'address8:10.0.0.54:porti4000ee11:last packeti1796479442e5:flagsl3:RTP6:fillede5:statsd7:'
    b'packetsi0e5:bytesi0e6:errorsi0eeed10:local porti40041e13:local address9:127.0.0.16:famil'
    b'y4:IPv48:endpointd6:family4:IPv47:address8:10.0.0.54:porti4001ee19:advertised endpointd6'
    b':family4:IPv47:address8:10.0.0.54:porti4001ee11:last packeti1796479442e5:flagsl4:RTCP6:f'
    b'illede5:statsd7:packetsi0e5:bytesi0e6:errorsi0eeee5:flagsl11:initialized4:send4:recveeee'
    b'2:ttd3:tag2:tt7:createdi1796479442e13:subscriptionsld3:tag2:ft4:type12:offer/answeree11:'
    b'subscribersld3:tag2:ft4:type12:offer/answeree6:mediasld5:indexi1e4:type5:audio8:protocol'
    b'7:RTP/AVP7:streamsld10:local porti40022e13:local address9:127.0.0.16:family4:IPv48:endpo'
    b'intd6:family4:IPv47:address8:10.0.0.64:porti5000ee19:advertised endpointd6:family4:IPv47'
    b':address8:10.0.0.64:porti5000ee11:last packeti1796479442e5:flagsl3:RTP6:fillede5:statsd7'
    b':packetsi0e5:bytesi0e6:errorsi0eeed10:local porti40023e13:local address9:127.0.0.16:fami'
    b'ly4:IPv48:endpointd6:family4:IPv47:address8:10.0.0.64:porti5001ee19:advertised endpointd'
    b'6:family4:IPv47:address8:10.0.0.64:porti5001ee11:last packeti1796479442e5:flagsl4:RTCP6:'
    b'fillede5:statsd7:packetsi0e5:bytesi0e6:errorsi0eeee5:flagsl11:initialized4:send4:recv15:'
    b'ICE controllingeeeee6:totalsd3:RTPd7:packetsi0e5:bytesi0e6:errorsi0ee4:RTCPd7:packetsi0e'
    b'5:bytesi0e6:errorsi0eee6:result2:oke'
)


# ------------------------------------------------------------------------------ framing


def test_frame_is_cookie_space_bencoded_dictionary() -> None:
    # the doc's own example: "5323_1 d7:command4:pinge"
    assert frame("5323_1", ping()) == b"5323_1 d7:command4:pinge"


def test_a_retransmission_reuses_the_cookie_and_the_bytes() -> None:
    cmd = offer("c1", "ft", b"v=0\r\n", NgFlags(ice="force"))
    first = NgRequest.build(cmd)
    again = NgRequest.build(cmd, first.cookie)
    assert again.data == first.data and again.cookie == first.cookie
    assert first.data.startswith(first.cookie.encode() + b" d")
    # a new request gets a new cookie
    assert NgRequest.build(cmd).cookie != first.cookie


def test_cookies_are_unique_hex() -> None:
    cookies = {new_cookie() for _ in range(1000)}
    assert len(cookies) == 1000
    assert all(len(c) == 16 and int(c, 16) >= 0 for c in cookies)


@pytest.mark.parametrize("cookie", ["", "a b", "x" * 65, "caf\u00e9", "tab\t"])
def test_bad_cookies_are_refused(cookie: str) -> None:
    with pytest.raises(ValueError):
        frame(cookie, ping())


def test_split_message() -> None:
    assert split_message(b"abc d6:result4:ponge") == ("abc", {b"result": b"pong"})
    # only the first space separates: the dictionary may contain spaces
    assert split_message(b"k d3:sdp3:a be") == ("k", {b"sdp": b"a b"})


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"d6:result2:oke", "no cookie"),
        (b" d6:result2:oke", "no cookie"),
        (b"x" * 65 + b" de", "no cookie"),
        (b"\xff\xfe de", "not ASCII"),
        (b"c\x01 de", "not printable"),
        (b"abc d6:result", "bad bencode"),
        (b"abc li1ee", "not a dictionary"),
        (b"abc de trailing", "bad bencode"),
    ],
)
def test_split_message_refuses_what_is_not_ng(data: bytes, why: str) -> None:
    with pytest.raises(NgProtocolError, match=why):
        split_message(data)


# ------------------------------------------------------------------------------ commands


def test_offer_keys() -> None:
    flags = NgFlags(
        transport_protocol="RTP/AVP",
        ice="remove",
        dtls="off",
        rtcp_mux=("demux",),
        flags=("SIP-source-address",),
        replace=("origin", "session-connection"),
        received_from=("IP4", "192.0.2.7"),
    )
    cmd = offer("call@x", "ft", b"v=0\r\n", flags, via_branch="z9hG4bK1")
    assert decode(encode(cmd.dictionary())) == {
        b"command": b"offer",
        b"call-id": b"call@x",
        b"from-tag": b"ft",
        b"via-branch": b"z9hG4bK1",
        b"sdp": b"v=0\r\n",
        b"transport-protocol": b"RTP/AVP",
        b"ICE": b"remove",
        b"DTLS": b"off",
        b"rtcp-mux": [b"demux"],
        b"flags": [b"SIP-source-address"],
        b"replace": [b"origin", b"session-connection"],
        b"received-from": [b"IP4", b"192.0.2.7"],
    }
    assert cmd.call_id == "call@x"
    assert describe(cmd) == "offer call-id=call@x from-tag=ft via-branch=z9hG4bK1"


def test_empty_flags_add_no_keys() -> None:
    assert NgFlags().params() == {}
    assert offer("c", "f", b"s", NgFlags()).dictionary() == {
        "command": "offer",
        "call-id": "c",
        "from-tag": "f",
        "sdp": b"s",
    }


def test_answer_delete_query_keys() -> None:
    a = answer("c", "ft", "tt", b"v=0", NgFlags(ice="force", dtls="passive", sdes=("off",)), via_branch="b")
    assert a.dictionary() == {
        "command": "answer",
        "call-id": "c",
        "from-tag": "ft",
        "to-tag": "tt",
        "via-branch": "b",
        "sdp": b"v=0",
        "ICE": "force",
        "DTLS": "passive",
        "SDES": ["off"],
    }
    assert delete("c").dictionary() == {"command": "delete", "call-id": "c"}
    assert delete("c", "ft", "tt", "b").dictionary() == {
        "command": "delete",
        "call-id": "c",
        "from-tag": "ft",
        "to-tag": "tt",
        "via-branch": "b",
    }
    assert query("c").dictionary() == {"command": "query", "call-id": "c"}
    assert ping().dictionary() == {"command": "ping"}


def test_routing_a_command_to_a_server() -> None:
    server = NgAddress("127.0.0.1", 2223)
    cmd = delete("c").routed(server)
    assert cmd.server == server and cmd.dictionary() == {"command": "delete", "call-id": "c"}


# ------------------------------------------------------------------------------ replies


def test_ok_reply_with_sdp_and_warning() -> None:
    reply = decode_reply({b"result": b"ok", b"sdp": b"v=0\r\n", b"warning": b"Call-ID not found"})
    assert isinstance(reply, NgOk)
    assert reply.sdp == b"v=0\r\n" and reply.warning == "Call-ID not found"


def test_pong() -> None:
    assert decode_reply({b"result": b"pong"}) == NgOk("pong")


def test_error_reply_is_a_typed_result() -> None:
    reply = decode_reply({b"result": b"error", b"error-reason": b"Unknown call-id"})
    assert reply == NgError("error", "Unknown call-id")
    # "load limit" (the supports=[load limit] extension) is an error too, with "message"
    assert decode_reply({b"result": b"load limit", b"message": b"busy"}) == NgError("load limit", "busy")
    assert decode_reply({b"result": b"error"}) == NgError("error", "error")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({}, "no 'result'"),
        ({b"result": 1}, "no 'result'"),
        ({b"result": b"maybe"}, "unknown result"),
        ({b"result": b"ok", b"sdp": 3}, "'sdp' is not a string"),
    ],
)
def test_malformed_replies(body: dict[bytes, object], why: str) -> None:
    with pytest.raises(NgProtocolError, match=why):
        decode_reply(body)  # type: ignore[arg-type]


def test_query_statistics_from_a_real_reply() -> None:
    cookie, body = split_message(QUERY_REPLY)
    assert cookie == "q3"
    reply = decode_reply(body)
    assert isinstance(reply, NgOk)
    stats = parse_query(reply)
    assert stats.created == 1796479442 and stats.last_signal == 1796479442
    assert set(stats.tags) == {"ft", "tt"}
    ft = stats.tags["ft"]
    assert ft.in_dialogue_with == "tt" and stats.tags["tt"].in_dialogue_with == "ft"
    (media,) = ft.medias
    assert (media.index, media.type, media.protocol) == (1, "audio", "RTP/AVP")
    assert "initialized" in media.flags
    rtp, rtcp = media.streams
    assert rtp.local_port == 40040 and rtp.endpoint == ("10.0.0.5", 4000)
    assert rtp.advertised_endpoint == ("10.0.0.5", 4000) and "RTP" in rtp.flags
    assert rtcp.endpoint == ("10.0.0.5", 4001)
    assert rtp.stats.packets == 0 and stats.rtp.bytes == 0 and stats.rtcp.errors == 0


def test_query_layout_of_the_documentation() -> None:
    """The doc's example uses "in dialogue with" and "last_signal"; both are read."""
    raw = {
        b"result": b"ok",
        b"last_signal": 1402064116,
        b"created": 1402064111,
        b"totals": {b"RTP": {b"bytes": 100287, b"errors": 0, b"packets": 705}},
        b"tags": {
            b"cs6kn1rloc": {
                b"tag": b"cs6kn1rloc",
                b"in dialogue with": b"0f0d2e18",
                b"medias": [
                    {
                        b"protocol": b"RTP/SAVPF",
                        b"index": 1,
                        b"type": b"audio",
                        b"flags": [b"initialized", b"DTLS-SRTP", b"ICE"],
                        b"streams": [{b"crypto suite": b"AES_CM_128_HMAC_SHA1_80", b"stats": {b"packets": 362}}],
                    }
                ],
            }
        },
    }
    stats = parse_query(NgOk("ok", raw=raw))  # type: ignore[arg-type]
    assert stats.last_signal == 1402064116 and stats.rtp.packets == 705
    tag = stats.tags["cs6kn1rloc"]
    assert tag.in_dialogue_with == "0f0d2e18"
    stream = tag.medias[0].streams[0]
    assert stream.crypto_suite == "AES_CM_128_HMAC_SHA1_80" and stream.local_port is None
    assert stream.stats.packets == 362


# ------------------------------------------------------------------------------ addresses


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("udp:127.0.0.1:2223", "127.0.0.1", 2223),
        ("UDP:rtp.Example.com:22222", "rtp.example.com", 22222),
        ("udp:[::1]:2223", "::1", 2223),
        ("udp:[2001:DB8::1]:1", "2001:db8::1", 1),
    ],
)
def test_ng_addresses(text: str, host: str, port: int) -> None:
    address = parse_ng_address(text)
    assert address == NgAddress(host, port)
    assert parse_ng_address(str(address)) == address


@pytest.mark.parametrize(
    "text",
    ["127.0.0.1:2223", "tcp:127.0.0.1:2223", "udp:127.0.0.1", "udp::2223", "udp:::1:2223", "udp:[::1]2223",
     "udp:[nope]:1", "udp:host:0", "udp:host:65536", "udp:host:x", "udp:ho st:1"],
)
def test_bad_ng_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ng_address(text)


def test_command_is_a_value() -> None:
    assert NgCommand("ping") == ping()
