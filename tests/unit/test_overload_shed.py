"""The byte-level 503 of overload control (issue 19, RFC 3261 §21.5.4, §8.2.6): what it answers,
and everything it leaves to the full path."""

from __future__ import annotations

from sipserver.shed import acks_shed_503, early_503, in_shed_dialog
from sipserver.sip import Response, parse_message

REG = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKabc;rport\r\n"
    b"v: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKdef\r\n"
    b"f: <sip:alice@example.com>;tag=1\r\n"
    b"t: <sip:alice@example.com>\r\n"
    b"i: call-1\r\n"
    b"CSeq: 7 REGISTER\r\n"
    b"Contact: <sip:alice@10.0.0.1:5070>\r\n"
    b"Content-Length: 0\r\n\r\n"
)
SRC = ("192.0.2.7", 40000)


def _never(key: object) -> bool:
    return False


def test_new_request_answered_503_with_retry_after() -> None:
    out = early_503(REG, SRC, 12, _never, b"sipserver")
    assert out is not None
    resp = parse_message(out)
    assert isinstance(resp, Response) and resp.status == 503
    assert resp.header("retry-after") == "12" and resp.header("server") == "sipserver"
    assert resp.call_id == "call-1" and resp.cseq.seq == 7 and resp.to_tag
    vias = resp.vias
    assert len(vias) == 2 and vias[0].branch == "z9hG4bKabc"
    assert vias[0].param("rport") == "40000" and vias[0].param("received") == "192.0.2.7"


def test_left_to_the_full_path() -> None:
    assert early_503(REG.replace(b"t: <sip:alice@example.com>", b"t: <sip:a@b>;tag=9"), SRC, 5, _never) is None
    assert early_503(REG.replace(b"REGISTER sip:", b"ACK sip:").replace(b"7 REGISTER", b"7 ACK"), SRC, 5, _never) is None
    assert early_503(REG.replace(b"REGISTER sip:", b"CANCEL sip:").replace(b"7 REGISTER", b"7 CANCEL"), SRC, 5, _never) is None
    assert early_503(b"SIP/2.0 200 OK\r\n" + REG.split(b"\r\n", 1)[1], SRC, 5, _never) is None
    assert early_503(REG.replace(b"\r\ni: call-1", b"\r\n i: call-1"), SRC, 5, _never) is None  # folded
    assert early_503(REG.replace(b"branch=z9hG4bKabc", b"branch=old"), SRC, 5, _never) is None
    assert early_503(REG.replace(b"7 REGISTER", b"7 INVITE"), SRC, 5, _never) is None
    assert early_503(REG[:60], SRC, 5, _never) is None
    seen: list[object] = []
    assert early_503(REG, SRC, 5, lambda k: seen.append(k) or True) is None  # a retransmission
    assert seen == [("z9hG4bKabc", "10.0.0.1", 5070, "REGISTER")]


def test_garbage_never_raises() -> None:
    for cut in range(len(REG)):
        early_503(REG[:cut] + b"\r\n\r\n", SRC, 5, _never)
        early_503(REG[cut:], SRC, 5, _never)


def test_the_ack_of_a_shed_503_is_recognised() -> None:
    out = early_503(REG.replace(b"REGISTER", b"INVITE"), SRC, 5, _never)
    assert out is not None
    to = next(line for line in out.split(b"\r\n") if line.startswith(b"To: "))
    ack = b"ACK sip:example.com SIP/2.0\r\n" + to + b"\r\nCSeq: 7 ACK\r\n\r\n"
    assert acks_shed_503(ack)
    assert not acks_shed_503(ack.replace(b"503shed", b"abc"))
    assert not acks_shed_503(b"BYE" + ack[3:])


def test_a_request_in_the_dialog_of_a_shed_503_is_answered_481() -> None:
    out = early_503(REG.replace(b"REGISTER", b"INVITE"), SRC, 5, _never)
    assert out is not None
    tag = parse_message(out).to_tag  # type: ignore[union-attr]
    bye = REG.replace(b"REGISTER sip:example.com", b"BYE sip:bob@example.com").replace(b"7 REGISTER", b"8 BYE")
    bye = bye.replace(b"t: <sip:alice@example.com>", b"t: <sip:alice@example.com>;tag=" + tag.encode())
    resp = parse_message(in_shed_dialog(bye, SRC, b"sipserver") or b"")
    assert isinstance(resp, Response) and resp.status == 481
    assert resp.to_tag == tag and resp.cseq.seq == 8 and resp.cseq.method == "BYE"
    assert resp.vias[0].param("received") == "192.0.2.7" and resp.header("server") == "sipserver"
    # Anything else takes its usual path.
    assert in_shed_dialog(bye.replace(tag.encode(), b"b1"), SRC) is None  # a real dialog
    assert in_shed_dialog(REG, SRC) is None  # no tag at all
    assert in_shed_dialog(bye.replace(b"BYE sip:", b"ACK sip:").replace(b"8 BYE", b"8 ACK"), SRC) is None
    assert in_shed_dialog(b"SIP/2.0 200 OK\r\n" + bye.split(b"\r\n", 1)[1], SRC) is None  # a response
    assert in_shed_dialog(bye.replace(b"t: ", b"Subject: x\r\nt: ", 1).replace(b"Subject: x", b" folded"), SRC) is None
    for cut in range(len(bye)):  # never raises on a truncated one
        in_shed_dialog(bye[:cut] + b"\r\n\r\n", SRC)
