#!/usr/bin/env python3
"""Main-thread cost of one outbound REGISTER through the whole runtime, without a client.

``register_bench.sh`` measures the server end to end, but its figure mixes the server with sipp,
the kernel and the machine's other load. This drives the real ``Server`` (memory store unless
``--sqlite``) in-process: each REGISTER goes through the same path as a datagram read from the
UDP socket (flow lookup, parse, transaction, registrar, 200 OK, sendto on a real socket to a
sink that nobody reads from; the sink is drained between rounds). That isolates the Python
cost per REGISTER, which is what limits the single-process rate.

    python scripts/bench/runtime_bench.py [--count N] [--sqlite] [--profile] [--shed] [--mock-clock]

Last line: ``runtime_register_us=N`` (microseconds per REGISTER, best of 6 rounds). With
``--shed`` the overload shedder is held on with a share of 1 (the queues look 1 s deep), so
every REGISTER takes the byte-level 503 path (issue 19): what one shed request costs;
``--shed-share 0.5`` holds it at that share: the mean of shed and admitted ones.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio  # noqa: E402
import trio.testing  # noqa: E402

from sipserver.cli import setup_logging  # noqa: E402
from sipserver.config import config_from_dict  # noqa: E402
from sipserver.runtime import Server  # noqa: E402
from sipserver.transport.connection import deliver  # noqa: E402


def register(i: int, port: int) -> bytes:
    return (
        f"REGISTER sip:example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{i}-bench;rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:u{i}@example.com>;tag={i}reg\r\n"
        f"To: <sip:u{i}@example.com>\r\n"
        f"Call-ID: {i}-bench@127.0.0.1\r\n"
        f"CSeq: 1 REGISTER\r\n"
        f"Supported: path, outbound\r\n"
        f"Contact: <sip:u{i}@192.0.2.1:5999;transport=UDP;ob>;reg-id=1;"
        f'+sip.instance="<urn:uuid:{i:08x}-0000-1000-8000-000000000001>";expires=600\r\n'
        f"Expires: 600\r\n"
        f"User-Agent: runtime-bench\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_from_dict(
            {
                "server": {
                    "listen": ["udp:127.0.0.1:0"],
                    "data_dir": tmp,
                    "domains": ["example.com"],
                    "log_level": args.log_level,
                },
                "store": {"backend": "sqlite" if args.sqlite else "memory"},
                "rate_limit": {"enabled": False},
                # This loop hands REGISTERs over faster than any socket could, yielding every
                # 64: with the SQLite store the 200s held for the group commit wait for those
                # turns, overload control would see a saturated server and shed most of them
                # (10,000 of 15,000 did), and the figure would be the cost of a 503. Off for
                # --sqlite, so that it is the full path; the shed options set the shedder.
                "limits": (
                    {"overload_queue_delay": 0, "overload_store_delay": 0}
                    if args.sqlite and not (args.shed or args.shed_share)
                    else {}
                ),
            }
        )
        setup_logging(cfg.server.log_level, cfg.server.log_format)
        server = Server(cfg)
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        port = sink.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            if args.shed or args.shed_share:
                server._queue_delay = lambda now: 0.025 if args.shed_share else 1.0  # type: ignore[method-assign]
                server.shedder.shedding, server.shedder.share = True, args.shed_share or 1.0
                server.shedder.last_tick = float("inf")  # the share stays where it was put
            table = server.flows
            endpoint = next(iter(table._udp.values()))
            state = table.open_udp(endpoint, ("127.0.0.1", port), trio.current_time())
            flow = state.flow
            n = args.count
            rounds = args.rounds
            data = [register(i, port) for i in range((rounds + 1) * n)]

            def drain() -> None:
                while True:
                    try:
                        sink.recv(65536)
                    except BlockingIOError:
                        return

            async def run(lo: int, hi: int) -> None:
                for i in range(lo, hi):
                    await deliver(server, flow, data[i])
                    if i % 64 == 0:
                        drain()
                        await trio.lowlevel.checkpoint()  # let the writer task run
                drain()

            best = float("inf")
            for k in range(rounds):
                t = time.perf_counter()
                await run(k * n, (k + 1) * n)
                await trio.sleep(0.05)
                # on the MockClock the sleep takes no real time (the clock jumps)
                slept = 0.0 if args.mock_clock else 0.05
                best = min(best, (time.perf_counter() - t - slept) / n)
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
                await run(rounds * n, (rounds + 1) * n)
                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(35)
            print(f"bindings: {server.store.count()}; gc counts {gc.get_count()}", file=sys.stderr)
            nursery.cancel_scope.cancel()
        await server.shutdown()
    what = (
        "shed (503)"
        if args.shed
        else f"REGISTER (share {args.shed_share} shed)"
        if args.shed_share
        else "REGISTER"
    )
    store = "sqlite" if args.sqlite else "memory"
    print(
        f"{best * 1e6:.1f} us per {what} through the runtime ({store} store); 503s {server.stats.get('overload_rejected_early', 0)}"
    )
    print(f"runtime_register_us={best * 1e6:.1f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--sqlite", action="store_true")
    p.add_argument("--profile", action="store_true")
    p.add_argument(
        "--shed", action="store_true", help="every REGISTER answered 503 by the byte-level path"
    )
    p.add_argument(
        "--shed-share",
        type=float,
        default=0.0,
        help="shedding engaged with this share: the mean cost of shed and admitted ones",
    )
    p.add_argument(
        "--log-level",
        default="info",
        help="the server's log_level (instr_bench.py: warning, so that the per-second"
        " log budget's lines, which a slower run writes more of, are not counted)",
    )
    p.add_argument(
        "--mock-clock",
        action="store_true",
        help="run on trio's MockClock (time moves only while every task waits): timers and"
        " periodic work then fire the same number of times however slow the process runs"
        " (instr_bench.py under valgrind)",
    )
    a = p.parse_args()
    trio.run(main, a, clock=trio.testing.MockClock(autojump_threshold=0) if a.mock_clock else None)
