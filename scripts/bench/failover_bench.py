#!/usr/bin/env python3
"""Time from a flow failing to the request arriving on the instance's next flow (RFC 5626 §7).

One phone instance keeps two TCP flows (reg-id 1 and 2) to a sipserver subprocess; a caller sends
INVITEs. Each round, flow 1 fails while it holds the INVITE, either by answering 430 Flow Failed or
by its connection being closed, and the clock runs until the INVITE shows up on flow 2.

Usage: failover_bench.py [--rounds 50]
Last line: ``failover_430_p50_ms=N failover_430_p99_ms=N failover_close_p50_ms=N failover_close_p99_ms=N``
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchlib import BenchServer, percentile, register_text  # noqa: E402

from sipserver.sip import Request, parse_message  # noqa: E402
from sipserver.sip.framer import FramedMessage, StreamFramer  # noqa: E402

INSTANCE = "urn:uuid:0fa110fe-0000-1000-8000-000000000001"


class Flow:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.framer = StreamFramer(1 << 20)
        self.local = stream.socket.getsockname()[:2]

    @classmethod
    async def open(cls, port: int) -> Flow:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def recv(self) -> Request:
        while True:
            ev = self.framer.next_event()
            if isinstance(ev, FramedMessage):
                msg = parse_message(ev.data)
                if isinstance(msg, Request):
                    return msg
                continue
            if ev is not None:
                continue
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError
            self.framer.feed(chunk)

    async def register(self, reg_id: int, cseq: int) -> None:
        await self.stream.send_all(register_text("phone", self.local, reg_id=reg_id, instance=INSTANCE, call_id=f"fo-{reg_id}-{secrets.token_hex(3)}", cseq=cseq))
        while True:
            ev = self.framer.next_event()
            if isinstance(ev, FramedMessage):
                if ev.data.startswith(b"SIP/2.0 200"):
                    return
                raise RuntimeError(ev.data[:200])
            chunk = await self.stream.receive_some(65536)
            self.framer.feed(chunk)

    async def respond(self, req: Request, status: int, reason: str) -> None:
        lines = [f"SIP/2.0 {status} {reason}"]
        lines += [f"Via: {v}" for v in req.header_lines("via")]
        lines += [f"From: {req.header('from')}", f"To: {req.header('to')};tag=ph", f"Call-ID: {req.call_id}",
                  f"CSeq: {req.cseq.seq} {req.cseq.method}", "Content-Length: 0", "", ""]
        await self.stream.send_all("\r\n".join(lines).encode())


def invite(local: tuple[str, int], n: int) -> bytes:
    return (
        f"INVITE sip:phone@example.com SIP/2.0\r\nVia: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:phone@example.com>\r\nFrom: <sip:caller@example.com>;tag=c{n}\r\n"
        f"Call-ID: fo-call-{n}-{secrets.token_hex(3)}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def run(rounds: int) -> None:
    server = BenchServer()
    try:
        caller = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await caller.bind(("127.0.0.1", 0))
        local = caller.getsockname()
        f2 = await Flow.open(server.port)
        await f2.register(2, 1)
        results: dict[str, list[float]] = {"430": [], "close": []}
        n = 0
        for mode in ("430", "close"):
            f1 = await Flow.open(server.port)
            await f1.register(1, 1)
            for r in range(rounds):
                n += 1
                await caller.sendto(invite(local, n), ("127.0.0.1", server.port))
                inv1 = await f1.recv()
                t0 = time.perf_counter()
                if mode == "430":
                    await f1.respond(inv1, 430, "Flow Failed")
                else:
                    await f1.stream.aclose()
                inv2 = await f2.recv()
                results[mode].append((time.perf_counter() - t0) * 1000)
                await f2.respond(inv2, 486, "Busy Here")
                with trio.fail_after(5):
                    while True:
                        data, _ = await caller.recvfrom(65536)
                        if b" 486 " in data.split(b"\r\n")[0]:
                            break
                if mode == "430":
                    ack = await f1.recv()  # the hop-by-hop ACK for the 430
                    assert ack.method == "ACK"
                    await f1.register(1, r + 2)
                else:
                    f1 = await Flow.open(server.port)
                    await f1.register(1, 1)
                ack2 = await f2.recv()
                assert ack2.method == "ACK"
        line = []
        for mode, vals in results.items():
            p50, p99 = percentile(vals, 50), percentile(vals, 99)
            print(f"failover after {mode:5}: {len(vals)} rounds, p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(vals):.2f} ms")
            line.append(f"failover_{mode}_p50_ms={p50:.2f} failover_{mode}_p99_ms={p99:.2f}")
        print(" ".join(line))
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=50)
    args = p.parse_args()
    trio.run(run, args.rounds)


if __name__ == "__main__":
    main()
