#!/usr/bin/env python3
"""Idle registered flows against any SIP server: memory per flow and CRLF keep-alive round trip.

For compare.sh (workloads flow_bytes_tcp, flow_bytes_ws, keepalive_p99_ms). Opens N TCP or
WebSocket (RFC 7118, subprotocol "sip") connections to the server, registers each with outbound
(RFC 5626 §4.2: reg-id, +sip.instance, ;ob) so the server holds a flow and a binding for it, as
a real edge does, then reads the server's memory from /proc: VmRSS of the root process, and Rss
and Pss summed over its whole process tree (Kamailio keeps connections and usrloc in shared
memory mapped by all its processes; Pss counts each shared page once). With --duration > 0 every
TCP flow then sends a double-CRLF ping (RFC 5626 §4.4.1) every --interval seconds and the time to
the single-CRLF pong is recorded.

Speaks only SIP on the wire, so the same run works against sipserver and Kamailio. Loopback
only; every phase is bounded in count and time.

Usage: flows.py --port P [--ws-port W] --pid SERVER_PID [--transport tcp|ws] [--flows N]
                [--interval S] [--duration S]
Last line: flows=N failed=N setup_s=N vmrss_per_flow=N rss_per_flow=N pss_per_flow=N
           ka_pings=N ka_lost=N ka_p50_ms=N ka_p99_ms=N cpu_setup_s=N cpu_ka_s=N
"""

from __future__ import annotations

import argparse
import random
import resource
import secrets
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proc import cpu_seconds, memory, percentile, vmrss  # noqa: E402

HOST = "127.0.0.1"


def register_text(user: str, local: tuple[str, int], transport: str) -> bytes:
    host, port = local
    inst = f"urn:uuid:5e1f0c2a-0000-4000-8000-{secrets.token_hex(6)}"
    return (
        f"REGISTER sip:example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} {host}:{port};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:{user}@example.com>;tag={secrets.token_hex(4)}\r\n"
        f"To: <sip:{user}@example.com>\r\n"
        f"Call-ID: {secrets.token_hex(10)}@flows\r\n"
        f"CSeq: 1 REGISTER\r\n"
        f"Supported: path, outbound\r\n"
        f'Contact: <sip:{user}@192.0.2.1:5999;transport={transport.lower()};ob>;reg-id=1;+sip.instance="<{inst}>"\r\n'
        f"Expires: 3600\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


class TcpFlow:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    async def read_message(self) -> bytes:
        """One SIP message (headers + Content-Length body), skipping keep-alive CRLFs."""
        while True:
            self.buf = self.buf.lstrip(b"\r\n")
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = self.buf[: end + 4]
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() in (b"content-length", b"l"):
                        length = int(value.strip() or b"0")
                if len(self.buf) >= end + 4 + length:
                    msg, self.buf = self.buf[: end + 4 + length], self.buf[end + 4 + length :]
                    return msg
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    async def ping(self) -> None:
        await self.stream.send_all(b"\r\n\r\n")
        while b"\r\n" not in self.buf:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        self.buf = self.buf[self.buf.index(b"\r\n") + 2 :]


async def run(args: argparse.Namespace) -> None:
    pid = args.pid
    await trio.sleep(args.settle)
    v0 = vmrss(pid)
    rss0, pss0 = memory(pid)
    cpu0 = cpu_seconds(pid)
    flows: list[object] = []
    failures: list[str] = []
    t0 = time.perf_counter()

    async with trio.open_nursery() as nursery:

        async def open_one(i: int) -> None:
            try:
                with trio.fail_after(args.step_timeout):
                    if args.transport == "tcp":
                        stream = await trio.open_tcp_stream(HOST, args.port)
                        flow = TcpFlow(stream)
                        local = stream.socket.getsockname()[:2]
                        await stream.send_all(register_text(f"flow{i}", local, "TCP"))
                        resp = await flow.read_message()
                        if not resp.startswith(b"SIP/2.0 200"):
                            raise RuntimeError(resp.split(b"\r\n", 1)[0].decode(errors="replace"))
                        flows.append(flow)
                    else:
                        import trio_websocket

                        ws = await trio_websocket.connect_websocket(
                            nursery, HOST, args.ws_port, "/", use_ssl=False, subprotocols=["sip"]
                        )
                        local = ws._stream.socket.getsockname()[:2]  # type: ignore[attr-defined]
                        await ws.send_message(register_text(f"flow{i}", local, "WS").decode())
                        resp = await ws.get_message()
                        text = resp if isinstance(resp, str) else resp.decode(errors="replace")
                        if not text.startswith("SIP/2.0 200"):
                            raise RuntimeError(text.split("\r\n", 1)[0])
                        flows.append(ws)
            except Exception as exc:  # noqa: BLE001 - counted and reported, never fatal
                failures.append(f"{type(exc).__name__}: {exc}")

        deadline = trio.current_time() + args.setup_limit
        batch = 200
        for start in range(0, args.flows, batch):
            if trio.current_time() > deadline:
                failures.append("setup time limit reached")
                break
            async with trio.open_nursery() as n2:
                for i in range(start, min(args.flows, start + batch)):
                    n2.start_soon(open_one, i)
        setup_s = time.perf_counter() - t0
        cpu1 = cpu_seconds(pid)
        await trio.sleep(2.0)
        v1 = vmrss(pid)
        rss1, pss1 = memory(pid)
        n = max(1, len(flows))

        rtts: list[float] = []
        lost = 0
        cpu2 = cpu3 = cpu_seconds(pid)
        if args.duration > 0 and args.transport == "tcp":
            end = trio.current_time() + args.duration

            async def pinger(f: TcpFlow) -> None:
                nonlocal lost
                await trio.sleep(random.uniform(0, args.interval))
                while trio.current_time() < end:
                    t = time.perf_counter()
                    try:
                        with trio.fail_after(args.step_timeout):
                            await f.ping()
                    except (trio.TooSlowError, EOFError, OSError, trio.BrokenResourceError):
                        lost += 1
                        return
                    rtts.append((time.perf_counter() - t) * 1000)
                    await trio.sleep(args.interval)

            cpu2 = cpu_seconds(pid)
            with trio.move_on_after(args.duration + args.step_timeout + 5):
                async with trio.open_nursery() as n3:
                    for f in flows:
                        n3.start_soon(pinger, f)
            cpu3 = cpu_seconds(pid)
        nursery.cancel_scope.cancel()

    for f in flows:
        if isinstance(f, TcpFlow):
            f.stream.socket.close()

    if failures:
        kinds: dict[str, int] = {}
        for f in failures:
            kinds[f[:120]] = kinds.get(f[:120], 0) + 1
        for k, c in sorted(kinds.items(), key=lambda kv: -kv[1])[:5]:
            print(f"flow setup failure x{c}: {k}", file=sys.stderr)
    p50, p99 = percentile(rtts, 50), percentile(rtts, 99)
    print(
        f"{len(flows)} {args.transport} flows registered in {setup_s:.1f}s ({len(failures)} failed); "
        f"VmRSS {v0 / 1e6:.1f} -> {v1 / 1e6:.1f} MB, tree Rss {rss0 / 1e6:.1f} -> {rss1 / 1e6:.1f} MB, "
        f"tree Pss {pss0 / 1e6:.1f} -> {pss1 / 1e6:.1f} MB"
    )
    if rtts or lost:
        print(f"keep-alive: {len(rtts)} pings, {lost} lost, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    print(
        f"flows={len(flows)} failed={len(failures)} setup_s={setup_s:.2f} "
        f"vmrss_per_flow={(v1 - v0) / n:.0f} rss_per_flow={(rss1 - rss0) / n:.0f} "
        f"pss_per_flow={(pss1 - pss0) / n:.0f} ka_pings={len(rtts)} ka_lost={lost} "
        f"ka_p50_ms={p50:.3f} ka_p99_ms={p99:.3f} cpu_setup_s={cpu1 - cpu0:.2f} cpu_ka_s={cpu3 - cpu2:.2f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True, help="SIP TCP port")
    p.add_argument("--ws-port", type=int, default=0)
    p.add_argument("--pid", type=int, required=True, help="server (root) process id")
    p.add_argument("--transport", choices=("tcp", "ws"), default="tcp")
    p.add_argument("--flows", type=int, default=5000)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between pings per flow")
    p.add_argument("--duration", type=float, default=0.0, help="keep-alive phase; 0 skips it")
    p.add_argument("--settle", type=float, default=1.0, help="wait before the baseline reading")
    p.add_argument("--step-timeout", type=float, default=10.0)
    p.add_argument("--setup-limit", type=float, default=120.0, help="stop opening flows after this")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.transport == "ws" and not args.ws_port:
        p.error("--ws-port is needed for --transport ws")
    trio.run(run, args)


if __name__ == "__main__":
    main()
