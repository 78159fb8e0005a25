"""Issue 18 end to end: the example web phone in headless Chromium and a baresip registered over
UDP call each other through sipserver and a real rtpengine, with audio both ways.

The browser does what browsers do (ICE, DTLS-SRTP, RTP/SAVPF, rtcp-mux, Opus or PCMU) with
Chromium's fake microphone (a beep); baresip does plain RTP/AVP with PCMU from a sine generator
(``ausine``). Neither could talk to the other without rtpengine translating. Each test checks on
three sides that audio flowed both ways: rtpengine's ``query`` while the call is up (packets
relayed from each party), the browser's ``getStats`` (packets received and sent, logged by the
page with ``stats=1``) and the audio baresip decoded from what it received (its ``sndfile``
module dumps it to a WAV file: more than a second of it, not silence); and that the hang-up
deleted the rtpengine call.

Under CI=true a missing tool (rtpengine, baresip, chromium, SIP.js) fails; elsewhere it skips.
"""

from __future__ import annotations

import array
import contextlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import wave
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio
from serverproc import REPO, ServerProcess, free_port, in_ci, require_tool
from test_baresip import CONFIG, DOMAIN, Baresip

if str(REPO / "tests" / "integration") not in sys.path:
    sys.path.insert(0, str(REPO / "tests" / "integration"))

from rtpengine_fixture import RtpEngine, start_rtpengine, stop_rtpengine  # noqa: E402
from webphone_files import SIPJS_LIB, WebphoneFiles  # noqa: E402

from sipserver.media.client import NgCommandError, open_ng_client  # noqa: E402
from sipserver.media.ng import CallStats  # noqa: E402

pytestmark = pytest.mark.interop

TALK = 3.0  # seconds of audio before the hang-up

# The interop baresip config with a sine tone as the microphone: RTP flows out from the first
# moment, whatever comes in (aubridge's null player swallows what is received).
MEDIA_CONFIG = CONFIG.replace("audio_source            aubridge,null", "audio_source            ausine,440").replace(
    "module                  aubridge.so", "module                  aubridge.so\nmodule                  ausine.so"
) + "ausrc_srate             48000\nausrc_channels          2\n"  # ausine: 48 kHz stereo only; baresip resamples


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if in_ci():
        pytest.fail("chromium is not installed (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


class Browser:
    """Headless Chromium showing the web phone; its console (``webphone: ...`` lines) is read
    from its stderr log."""

    def __init__(self, exe: str, url: str, profile: Path) -> None:
        self.log_path = profile.with_suffix(".log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", f"--user-data-dir={profile}",
             "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             "--autoplay-policy=no-user-gesture-required",
             # rtpengine and the page are on loopback: let ICE use it, with plain IP candidates
             "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
             "--enable-logging=stderr", "--v=0", url],
            stdout=subprocess.DEVNULL, stderr=self._log,
        )

    def lines(self) -> list[str]:
        text = self.log_path.read_text(errors="replace")
        return re.findall(r'"webphone: ([^"]*)"', text)

    def wait(self, what: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if what in line:
                    return line
            time.sleep(0.1)
        raise AssertionError(f"the web phone never logged {what!r}; it logged {self.lines()}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """rtpengine, sipserver anchoring through it (mgmt on), the web phone's files over HTTP, and
    factories for browsers and baresips; everything stopped at teardown, logs printed."""
    exe = chromium()
    require_tool("baresip", "apt-get install baresip")
    if not (SIPJS_LIB / "index.js").exists():
        msg = "SIP.js missing: npm ci in tests/interop/js"
        pytest.fail(msg) if in_ci() else pytest.skip(msg)
    # Teardown in reverse order, every step even when one fails (no process outlives the test).
    cleanup = contextlib.ExitStack()
    engine = start_rtpengine(tmp_path)
    cleanup.callback(lambda: print(f"----- rtpengine log -----\n{engine.log()[-4000:]}"))
    cleanup.callback(stop_rtpengine, engine)
    mgmt = free_port(both=False)
    with cleanup:
        server = ServerProcess(
            tmp_path, config=f'[media]\nrtpengine = ["{engine.address}"]\n', extra=["--mgmt", f"127.0.0.1:{mgmt}"]
        )
        cleanup.callback(lambda: print(f"----- server log -----\n{server.log_path.read_text(errors='replace')[-8000:]}"))
        cleanup.callback(server.stop)
        files = ThreadingHTTPServer(("127.0.0.1", 0), WebphoneFiles)
        threading.Thread(target=files.serve_forever, daemon=True).start()
        cleanup.callback(files.shutdown)
        yield from _factory(exe, tmp_path, engine, server, mgmt, files, cleanup)


def _factory(
    exe: str, tmp_path: Path, engine: RtpEngine, server: ServerProcess, mgmt: int,
    files: ThreadingHTTPServer, cleanup: contextlib.ExitStack,
) -> Iterator[Callable[..., Any]]:

    def make(kind: str, name: str, query: str = "") -> Any:
        if kind == "browser":
            url = (f"http://127.0.0.1:{files.server_address[1]}/index.html?server=ws://127.0.0.1:{server.ws_port}"
                   f"&domain={DOMAIN}&register=1&stats=1&user={name}{query}")
            b = Browser(exe, url, tmp_path / f"chromium-{name}")
            cleanup.callback(lambda: print(f"----- chromium {name} -----\n{b.stop()}"))
            return b
        dumps = tmp_path / f"audio-{name}"
        dumps.mkdir()
        phone = Baresip(tmp_path, name, MEDIA_CONFIG + f"module                  sndfile.so\nsnd_path                {dumps}\n")
        phone.dumps = dumps  # type: ignore[attr-defined]
        cleanup.callback(lambda: print(f"----- baresip {name} -----\n{phone.output()[-4000:]}"))
        cleanup.callback(phone.stop)
        return phone

    make.engine = engine  # type: ignore[attr-defined]
    make.server = server  # type: ignore[attr-defined]
    make.mgmt = mgmt  # type: ignore[attr-defined]
    yield make


def mgmt_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return json.load(resp)


def anchored_call(port: int, timeout: float = 5.0) -> str:
    """The Call-ID of the one call the server anchored (GET /media, what `ctl media` shows)."""
    deadline = time.monotonic() + timeout
    while True:
        data = mgmt_json(port, "/media")
        if data["active"] == 1 and data["calls"][0]["confirmed"]:
            return str(data["calls"][0]["call_id"])
        assert time.monotonic() < deadline, f"no answered anchored call in GET /media: {data}"
        time.sleep(0.1)


def query(engine: RtpEngine, call_id: str) -> CallStats | None:
    async def ask() -> CallStats | None:
        async with open_ng_client([engine.address]) as client:
            try:
                return await client.query(call_id)
            except NgCommandError as exc:
                assert "Unknown call-id" in str(exc), exc
                return None

    return trio.run(ask)


def relayed(stats: CallStats) -> dict[str, int]:
    """RTP packets rtpengine received from each party (tag), over all its streams."""
    return {tag: sum(s.stats.packets for m in t.medias for s in m.streams) for tag, t in stats.tags.items() if tag}


def protocols(stats: CallStats) -> set[str]:
    return {m.protocol or "" for t in stats.tags.values() for m in t.medias}


def received_audio(phone: Baresip) -> tuple[float, int]:
    """(seconds, peak) of the audio baresip decoded from the RTP it received: the ``sndfile``
    module dumps it to ``*-dec.wav`` (complete once the call closed)."""
    dumps = sorted(phone.dumps.glob("*-dec.wav"))  # type: ignore[attr-defined]
    assert dumps, "baresip decoded no audio (no *-dec.wav)"
    with wave.open(str(dumps[-1])) as w:
        frames = w.readframes(w.getnframes())
        seconds = w.getnframes() / w.getframerate()
    samples = array.array("h", frames)
    return seconds, max((abs(x) for x in samples), default=0)


def audio_both_ways(make: Any, phone: Baresip, web: Browser) -> None:
    """While the call is up: rtpengine relays packets from both parties, baresip receives RTP;
    after the hang-up: the browser had received and sent audio, and rtpengine forgot the call."""
    engine: RtpEngine = make.engine
    call_id = anchored_call(make.mgmt)
    time.sleep(TALK - 1.0)
    stats = query(engine, call_id)
    assert stats is not None, "rtpengine does not know the anchored call"
    assert {"RTP/AVP", "UDP/TLS/RTP/SAVPF"} <= protocols(stats), protocols(stats)
    counts = relayed(stats)
    assert len(counts) == 2 and all(n > 0 for n in counts.values()), f"rtpengine relayed {counts}"
    line = web.wait("hanging up", timeout=TALK + 5)
    got = [m for m in web.lines() if m.startswith("audio packets")]
    assert got, "the web phone logged no audio statistics"
    received, sent = map(int, re.findall(r"\d+", got[-1]))
    assert received > 0 and sent > 0, got[-1]
    assert line
    web.wait("call ended")
    deadline = time.monotonic() + 5
    while query(engine, call_id) is not None:
        assert time.monotonic() < deadline, "the hang-up did not delete the rtpengine call"
        time.sleep(0.1)
    assert mgmt_json(make.mgmt, "/media")["count"] == 0
    phone.wait_event({"CALL_CLOSED"}, 5)
    seconds, peak = received_audio(phone)
    assert seconds > 1.0 and peak > 1000, f"baresip received {seconds:.2f} s of audio, peak {peak}"


def test_browser_calls_baresip_audio_both_ways(gateway: Callable[..., Any]) -> None:
    """Issue 18: the web phone (WebSocket, WebRTC) calls baresip (UDP, RTP/AVP, PCMU); the call
    is anchored through rtpengine, audio flows both ways, the browser's BYE deletes the call."""
    bob = gateway("baresip", "bob")
    server: ServerProcess = gateway.server  # type: ignore[attr-defined]
    account = (f"<sip:bob@{DOMAIN};transport=udp>;outbound=\"sip:127.0.0.1:{server.port};transport=udp\""
               ";regint=60;answermode=auto;audio_codecs=PCMU")
    assert bob.register(account).get("type") == "REGISTER_OK"
    start = bob.mark()
    web = gateway("browser", "alice", f"&call=bob&hangup={TALK}")
    bob.wait_event({"CALL_ESTABLISHED"}, 20, start)
    web.wait("call answered")
    audio_both_ways(gateway, bob, web)


def test_baresip_calls_browser_audio_both_ways(gateway: Callable[..., Any]) -> None:
    """Issue 18, the reverse: baresip (UDP) calls the registered web phone, which answers by
    itself; audio flows both ways through rtpengine; the browser's hang-up deletes the call."""
    alice = gateway("baresip", "alice")
    server: ServerProcess = gateway.server  # type: ignore[attr-defined]
    account = (f"<sip:alice@{DOMAIN};transport=udp>;outbound=\"sip:127.0.0.1:{server.port};transport=udp\""
               ";regint=60;answermode=auto;audio_codecs=PCMU")
    assert alice.register(account).get("type") == "REGISTER_OK"
    web = gateway("browser", "web", f"&answer=1&hangup={TALK}")
    web.wait("registered")
    start = alice.mark()
    alice.command("dial", f"sip:web@{DOMAIN}")
    alice.wait_event({"CALL_ESTABLISHED"}, 20, start)
    web.wait("call answered")
    audio_both_ways(gateway, alice, web)
