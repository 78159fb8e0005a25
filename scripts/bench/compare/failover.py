#!/usr/bin/env python3
"""Failover time between the flows of one instance (RFC 5626 §5.3, §7), against any SIP server.

For compare.sh (workload failover_p99_ms). One phone instance keeps two TCP flows to the server,
reg-id 1 and reg-id 2, same +sip.instance; a caller sends INVITEs over UDP. Each round the flow
that receives the INVITE fails while it holds it, and the clock runs from that moment until the
same INVITE arrives on the other flow:

  close  the flow's connection is closed (the flow dies: RFC 5626 §5.3 "the flow has failed")
  430    the flow answers 430 Flow Failed (RFC 5626 §11.6)

The other flow then answers 486, the caller ACKs it, and the failed flow is registered again
for the next round. Which flow is tried first is the server's choice, so "first" is whichever
flow the INVITE reaches. A round whose INVITE never reaches the second flow within --wait
seconds counts as a timeout (and its time is not in the percentiles).

Speaks only SIP on the wire; loopback only; rounds and waits are bounded.

Usage: failover.py --port P [--close-rounds N] [--f430-rounds N] [--wait S]
Last line: close_rounds=N close_timeouts=N close_p50_ms=N close_p99_ms=N close_max_ms=N
           f430_rounds=N f430_timeouts=N f430_p50_ms=N f430_p99_ms=N f430_max_ms=N
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proc import percentile  # noqa: E402

HOST = "127.0.0.1"
INSTANCE = "urn:uuid:fa110fe7-5e1f-4c2a-8000-00000000c0de"


def parse(msg: bytes) -> tuple[str, list[tuple[str, str]]]:
    text = msg.decode(errors="replace")
    head = text.split("\r\n\r\n", 1)[0]
    lines = head.split("\r\n")
    hdrs = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        hdrs.append((name.strip().lower(), value.strip()))
    return lines[0], hdrs


def hget(hdrs: list[tuple[str, str]], *names: str) -> str:
    for n, v in hdrs:
        if n in names:
            return v
    return ""


class Flow:
    """One TCP connection of the phone; a reader task files every INVITE it gets."""

    def __init__(self, name: str, reg_id: int, stream: trio.SocketStream) -> None:
        self.name = name
        self.reg_id = reg_id
        self.stream = stream
        self.buf = b""
        self.local = stream.socket.getsockname()[:2]
        self.call_id = f"fo-{reg_id}-{secrets.token_hex(6)}"
        self.cseq = 0
        self.regs: trio.MemorySendChannel | None = None

    @classmethod
    async def open(cls, name: str, reg_id: int, port: int) -> Flow:
        return cls(name, reg_id, await trio.open_tcp_stream(HOST, port))

    async def read_message(self) -> bytes:
        while True:
            self.buf = self.buf.lstrip(b"\r\n")
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                _, hdrs = parse(self.buf[: end + 4])
                length = int(hget(hdrs, "content-length", "l") or "0")
                if len(self.buf) >= end + 4 + length:
                    msg, self.buf = self.buf[: end + 4 + length], self.buf[end + 4 + length :]
                    return msg
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk

    async def reader(self, invites: trio.MemorySendChannel) -> None:
        try:
            while True:
                msg = await self.read_message()
                t = time.perf_counter()
                start, hdrs = parse(msg)
                if start.startswith("INVITE "):
                    await invites.send((self, t, start, hdrs))
                elif start.startswith("SIP/2.0 ") and " REGISTER" in hget(hdrs, "cseq") and self.regs:
                    await self.regs.send(start)
                # ACKs for our 430 / 486 and anything else: nothing to do
        except (EOFError, trio.ClosedResourceError, trio.BrokenResourceError, OSError):
            return

    async def register(self) -> None:
        self.cseq += 1
        port = 5990 + self.reg_id
        req = (
            f"REGISTER sip:example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP {self.local[0]}:{self.local[1]};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:phone@example.com>;tag=fo{self.reg_id}\r\n"
            f"To: <sip:phone@example.com>\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: {self.cseq} REGISTER\r\n"
            f"Supported: path, outbound\r\n"
            f'Contact: <sip:phone@192.0.2.1:{port};transport=tcp;ob>;reg-id={self.reg_id};+sip.instance="<{INSTANCE}>"\r\n'
            f"Expires: 600\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        send, recv = trio.open_memory_channel(4)
        self.regs = send
        await self.stream.send_all(req)
        with trio.fail_after(5):
            start = await recv.receive()
        self.regs = None
        if not start.startswith("SIP/2.0 200"):
            raise RuntimeError(f"{self.name} REGISTER answered {start!r}")

    async def respond(self, hdrs: list[tuple[str, str]], status: str) -> None:
        lines = [f"SIP/2.0 {status}"]
        lines += [f"Via: {v}" for n, v in hdrs if n in ("via", "v")]
        lines += [f"From: {hget(hdrs, 'from', 'f')}", f"To: {hget(hdrs, 'to', 't')};tag=ph{secrets.token_hex(3)}",
                  f"Call-ID: {hget(hdrs, 'call-id', 'i')}", f"CSeq: {hget(hdrs, 'cseq')}", "Content-Length: 0", "", ""]
        await self.stream.send_all("\r\n".join(lines).encode())


async def run(args: argparse.Namespace) -> None:
    caller = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await caller.bind((HOST, 0))
    clocal = caller.getsockname()
    inv_send, inv_recv = trio.open_memory_channel(64)
    results: dict[str, list[float]] = {"close": [], "f430": []}
    timeouts = {"close": 0, "f430": 0}
    n = 0

    async with trio.open_nursery() as nursery:
        flows = {}
        for name, reg_id in (("A", 1), ("B", 2)):
            f = await Flow.open(name, reg_id, args.port)
            nursery.start_soon(f.reader, inv_send)
            await f.register()
            flows[name] = f

        async def caller_final(call_id: str, timeout: float) -> list[tuple[str, str]] | None:
            """The final response the caller gets for its INVITE (the servers choose which:
            486 from the second flow, or 480/408 after the failed flows)."""
            with trio.move_on_after(timeout):
                while True:
                    data, _ = await caller.recvfrom(65536)
                    start, hdrs = parse(data)
                    code = start.split(" ")[1:2]
                    if hget(hdrs, "call-id", "i") == call_id and code and code[0].isdigit() and int(code[0]) >= 200:
                        return hdrs
            return None

        async def next_invite(timeout: float):
            with trio.move_on_after(timeout):
                return await inv_recv.receive()
            return None

        for mode, rounds in (("close", args.close_rounds), ("f430", args.f430_rounds)):
            for _ in range(rounds):
                n += 1
                call_id = f"fo-call-{n}-{secrets.token_hex(4)}"
                branch = f"z9hG4bK{secrets.token_hex(8)}"
                via = f"SIP/2.0/UDP {clocal[0]}:{clocal[1]};branch={branch};rport"
                frm = f"<sip:caller@example.com>;tag=c{n}"
                invite = (
                    f"INVITE sip:phone@example.com SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n"
                    f"From: {frm}\r\nTo: <sip:phone@example.com>\r\nCall-ID: {call_id}\r\n"
                    f"CSeq: 1 INVITE\r\nContact: <sip:caller@{clocal[0]}:{clocal[1]}>\r\nContent-Length: 0\r\n\r\n"
                ).encode()
                await caller.sendto(invite, (HOST, args.port))
                got = await next_invite(5)
                while got is not None and hget(got[3], "call-id", "i") != call_id:
                    got = await next_invite(5)  # a stale INVITE from an earlier round
                if got is None:
                    raise RuntimeError(f"round {n}: the INVITE reached neither flow")
                first, _, _, hdrs = got
                other = flows["B" if first.name == "A" else "A"]
                t0 = time.perf_counter()
                if mode == "close":
                    first.stream.socket.close()
                else:
                    await first.respond(hdrs, "430 Flow Failed")
                second = await next_invite(args.wait)
                while second is not None and hget(second[3], "call-id", "i") != call_id:
                    second = await next_invite(args.wait)
                if second is None or second[0] is not other:
                    timeouts[mode] += 1
                    print(f"round {n} ({mode}): no INVITE on flow {other.name} within {args.wait:.0f}s", file=sys.stderr)
                    final = await caller_final(call_id, 0.1)
                else:
                    results[mode].append((second[1] - t0) * 1000)
                    await other.respond(second[3], "486 Busy Here")
                    final = await caller_final(call_id, 10)
                if final is not None:
                    ack = (
                        f"ACK sip:phone@example.com SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n"
                        f"From: {frm}\r\nTo: {hget(final, 'to', 't')}\r\nCall-ID: {call_id}\r\n"
                        f"CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
                    ).encode()
                    await caller.sendto(ack, (HOST, args.port))
                # bring the failed flow back for the next round
                if mode == "close":
                    fresh = await Flow.open(first.name, first.reg_id, args.port)
                    nursery.start_soon(fresh.reader, inv_send)
                    await fresh.register()
                    flows[first.name] = fresh
                else:
                    await first.register()
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()

    line = []
    for mode in ("close", "f430"):
        vals = results[mode]
        p50, p99 = percentile(vals, 50), percentile(vals, 99)
        mx = max(vals) if vals else float("nan")
        print(f"failover after {mode}: {len(vals)} rounds timed, {timeouts[mode]} timeouts, "
              f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {mx:.2f} ms")
        line.append(f"{mode}_rounds={len(vals)} {mode}_timeouts={timeouts[mode]} {mode}_p50_ms={p50:.2f} "
                    f"{mode}_p99_ms={p99:.2f} {mode}_max_ms={mx:.2f}")
    print(" ".join(line))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True, help="server UDP and TCP port")
    p.add_argument("--close-rounds", type=int, default=10)
    p.add_argument("--f430-rounds", type=int, default=20)
    p.add_argument("--wait", type=float, default=12.0, help="seconds to wait for the second flow")
    args = p.parse_args()
    trio.run(run, args)


if __name__ == "__main__":
    main()
