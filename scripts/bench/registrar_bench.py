#!/usr/bin/env python3
"""Sans-IO cost of one outbound REGISTER: parse + Registrar.handle + serialise the 200 OK.

No sockets, no trio: this is the protocol part of what register_bench.sh measures end to end.
Last line: ``register_handle_us=N`` (microseconds per REGISTER, best of 3).
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import time, cProfile, pstats, sys
from sipserver.sip import parse_message
from sipserver.registrar import Registrar, RegistrarSettings, LocationStore
from sipserver.outbound.flowtoken import FlowTokenCodec
from sipserver.outbound.flow import Flow, Transport
from sipserver.sip.uri import SipURI
store = LocationStore()
codec = FlowTokenCodec(b"k"*32)
reg = Registrar(RegistrarSettings(), store, codec, is_local_domain=lambda h: h=="example.com")
local = SipURI("sip", None, None, "127.0.0.1", 5060, [], None)
flow = Flow(Transport.UDP, ("127.0.0.1",5060), ("127.0.0.1",5070), 0)
def msg(i):
    return (f"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{i};rport\r\n"
    f"From: <sip:u{i}@example.com>;tag=r{i}\r\nTo: <sip:u{i}@example.com>\r\nCall-ID: {i}@127.0.0.1\r\nCSeq: 1 REGISTER\r\n"
    f"Max-Forwards: 70\r\nSupported: path, outbound\r\n"
    f'Contact: <sip:u{i}@192.0.2.1:5999;transport=UDP;ob>;reg-id=1;+sip.instance="<urn:uuid:{i:08x}-0000-1000-8000-000000000001>"\r\n'
    f"Expires: 600\r\nContent-Length: 0\r\n\r\n").encode()
N=20000
data=[msg(i) for i in range(N)]
def run(lo,hi):
    for i in range(lo,hi):
        m=parse_message(data[i]); r=reg.handle(m, flow, now=time.time(), local_uri=local); r.response.to_bytes()
best = float("inf")
for k in range(3):
    t = time.perf_counter(); run(k * 5000, (k + 1) * 5000); best = min(best, (time.perf_counter() - t) / 5000)
if "--profile" in sys.argv:
    cProfile.run("run(15000, 20000)", "/tmp/registrar_bench.prof")
    pstats.Stats("/tmp/registrar_bench.prof").sort_stats("tottime").print_stats(25)
print(f"{best * 1e6:.1f} us per REGISTER (parse + handle + serialise)")
print(f"register_handle_us={best * 1e6:.1f}")
