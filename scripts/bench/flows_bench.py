#!/usr/bin/env python3
"""Memory per registered idle flow and CRLF keepalive round trip (issues: runtime, performance).

Opens N connections to a sipserver subprocess (TCP by default, or WebSocket), registers each with
outbound (so the server holds a flow *and* a binding, as in production), measures the server's RSS
growth per flow from /proc, then has every connection send a double-CRLF ping every few seconds
(RFC 5626 §4.4.1) and measures the ping -> pong round trip.

Usage: flows_bench.py [--flows 5000] [--transport tcp|ws] [--interval 5] [--duration 15]
Last line: ``transport=tcp flows=N rss_per_flow_bytes=N keepalive_p50_ms=N keepalive_p99_ms=N ...``
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchlib import BenchServer, own_cpu_seconds, percentile, raise_nofile, register_text  # noqa: E402


class Conn:
    async def send(self, data: bytes) -> None: ...
    async def recv(self) -> bytes: ...


class TcpConn(Conn):
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def recv_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out


async def open_tcp(port: int, i: int) -> tuple[TcpConn, tuple[str, int]]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    local = stream.socket.getsockname()[:2]
    return TcpConn(stream), local


async def run(args: argparse.Namespace) -> None:
    server = BenchServer()
    try:
        await trio.sleep(1.0)
        base = server.rss_bytes()
        conns: list[object] = []
        t0 = time.perf_counter()

        async def open_one(i: int) -> None:
            if args.transport == "tcp":
                conn, local = await open_tcp(server.port, i)
                if args.no_register:
                    await conn.send(b"\r\n\r\n")  # one keepalive so the server has read from it
                    await conn.recv_until(b"\r\n")
                    conns.append(conn)
                    return
                await conn.send(register_text(f"u{i}", local, transport="TCP"))
                resp = await conn.recv_until(b"\r\n\r\n")
                # skip the (empty) body: Content-Length is 0 on the registrar's answers
                if not resp.startswith(b"SIP/2.0 200"):
                    raise RuntimeError(resp[:200])
                conns.append(conn)
            else:
                import trio_websocket

                ws = await trio_websocket.connect_websocket(nursery, "127.0.0.1", server.ws_port, "/", use_ssl=False, subprotocols=["sip"])
                local = ws._stream.socket.getsockname()[:2]  # type: ignore[attr-defined]
                await ws.send_message(register_text(f"u{i}", local, transport="WS").decode())
                resp = await ws.get_message()
                if not str(resp).startswith("SIP/2.0 200"):
                    raise RuntimeError(str(resp)[:200])
                conns.append(ws)

        async with trio.open_nursery() as nursery:
            batch = 200
            for start in range(0, args.flows, batch):
                async with trio.open_nursery() as n2:
                    for i in range(start, min(args.flows, start + batch)):
                        n2.start_soon(open_one, i)
            setup_s = time.perf_counter() - t0
            await trio.sleep(2.0)
            gc.collect()
            rss = server.rss_bytes()
            per_flow = (rss - base) / max(1, len(conns))
            rtts: list[float] = []
            cpu0 = server.cpu_seconds()
            deadline = trio.current_time() + args.duration

            async def pinger(c: object) -> None:
                await trio.sleep(random.uniform(0, args.interval))
                while trio.current_time() < deadline:
                    t = time.perf_counter()
                    if isinstance(c, TcpConn):
                        await c.send(b"\r\n\r\n")
                        await c.recv_until(b"\r\n")
                    else:
                        await c.send_message("\r\n\r\n")  # type: ignore[attr-defined]
                        await c.get_message()  # type: ignore[attr-defined]
                    rtts.append((time.perf_counter() - t) * 1000)
                    await trio.sleep(args.interval)

            async with trio.open_nursery() as n3:
                for c in conns:
                    n3.start_soon(pinger, c)
            cpu_ka = server.cpu_seconds() - cpu0
            nursery.cancel_scope.cancel()
        p50, p99 = percentile(rtts, 50), percentile(rtts, 99)
        what = "open" if args.no_register else "registered"
        print(f"{len(conns)} {args.transport} flows {what} in {setup_s:.1f}s")
        print(f"server RSS: {base / 1e6:.1f} MB idle -> {rss / 1e6:.1f} MB; {per_flow:.0f} bytes per {what} flow")
        print(f"keepalive: {len(rtts)} pings, p50 {p50:.2f} ms, p99 {p99:.2f} ms; server CPU {cpu_ka:.2f}s during pings")
        print(
            f"transport={args.transport} registered={0 if args.no_register else 1} flows={len(conns)} rss_per_flow_bytes={per_flow:.0f} "
            f"keepalive_p50_ms={p50:.2f} keepalive_p99_ms={p99:.2f} pings={len(rtts)} "
            f"server_cpu_s={server.cpu_seconds():.2f} client_cpu_s={own_cpu_seconds():.2f}"
        )
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--flows", type=int, default=5000)
    p.add_argument("--transport", choices=("tcp", "ws"), default="tcp")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between pings per flow")
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--no-register", action="store_true", help="idle flows without a binding (TCP only)")
    args = p.parse_args()
    raise_nofile()
    trio.run(run, args)


if __name__ == "__main__":
    main()
