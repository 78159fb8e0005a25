#!/usr/bin/env python3
"""Parse + access + serialise throughput of the SIP core (issue: SIP message core).

For a typical ~900-byte INVITE and a typical outbound REGISTER: parse, read Via (top branch and
count), CSeq, Call-ID, From tag, To tag, Contact, then serialise. One core, best of several runs.
Last line: ``invite_per_s=N register_per_s=M``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sipserver.sip.parser import parse_message  # noqa: E402

SDP = (
    "v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\ns=-\r\n"
    "c=IN IP4 192.0.2.101\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\na=sendrecv\r\n"
)
INVITE = (
    "INVITE sip:bob@example.com SIP/2.0\r\n"
    "Via: SIP/2.0/TCP 192.0.2.101:54321;branch=z9hG4bK776asdhds;rport\r\n"
    "Max-Forwards: 70\r\n"
    "To: Bob <sip:bob@example.com>\r\n"
    "From: Alice <sip:alice@example.com>;tag=1928301774\r\n"
    "Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    "CSeq: 314159 INVITE\r\n"
    "Contact: <sip:alice@192.0.2.101:54321;transport=tcp;ob>\r\n"
    "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, NOTIFY, UPDATE\r\n"
    "Supported: outbound, path, gruu, replaces\r\n"
    "User-Agent: ExamplePhone/1.2.3\r\n"
    "Session-Expires: 1800;refresher=uac\r\n"
    "P-Asserted-Identity: <sip:alice@example.com>\r\n"
    "Allow-Events: talk, hold, conference, refer, message-summary\r\n"
    "Content-Type: application/sdp\r\n"
    f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
).encode()
REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.101:54321;branch=z9hG4bKnashds7;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Alice <sip:alice@example.com>\r\n"
    b"From: Alice <sip:alice@example.com>;tag=a73kszlfl\r\n"
    b"Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.101\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Supported: path, outbound, gruu\r\n"
    b"Contact: <sip:alice@192.0.2.101:54321;transport=tcp;ob>"
    b';reg-id=1;+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"\r\n'
    b"Expires: 3600\r\n"
    b"User-Agent: ExamplePhone/1.2.3\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def one(data: bytes) -> bytes:
    msg = parse_message(data)
    via = msg.top_via
    _ = (via.branch, len(msg.vias), msg.cseq.seq, msg.call_id, msg.from_tag, msg.to_tag)
    _ = msg.contacts[0].uri
    return msg.to_bytes()


def rate(data: bytes, seconds: float = 1.0) -> float:
    best = 0.0
    for _ in range(3):
        n = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while True:
            for _ in range(200):
                one(data)
            n += 200
            now = time.perf_counter()
            if now >= end:
                break
        best = max(best, n / (now - t0))
    return best


def main() -> None:
    assert 850 <= len(INVITE) <= 1000, len(INVITE)
    inv = rate(INVITE)
    reg = rate(REGISTER)
    print(f"INVITE ({len(INVITE)} bytes): {inv:,.0f}/s   REGISTER ({len(REGISTER)} bytes): {reg:,.0f}/s")
    print(f"invite_per_s={inv:.0f} register_per_s={reg:.0f}")


if __name__ == "__main__":
    main()
