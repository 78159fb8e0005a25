"""baresip inside a lab namespace, driven over ctrl_tcp (netstring-framed JSON), as
tests/interop/test_baresip.py drives it on loopback: null audio (aubridge), accounts created
with `uanew` once the control socket is connected, `-s` SIP trace on stdout (complete only
after the process exited: stdout is block-buffered into a file)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from natlab import Netns

ANSI = re.compile(r"\x1b\[[0-9;]*m")
CTRL_PORT = 4444  # on the namespace's own loopback: every baresip has its namespace

CONFIG = """\
poll_method             epoll
sip_listen              {sip_ip}:{sip_port}
call_local_timeout      30
call_max_calls          4
audio_player            aubridge,null
audio_source            aubridge,null
audio_alert             aubridge,null
module_path             {module_path}
module                  g711.so
module                  aubridge.so
module_tmp              uuid.so
module_tmp              account.so
module_app              menu.so
module_app              ctrl_tcp.so
ctrl_tcp_listen         127.0.0.1:{ctrl_port}
"""

MODULE_DIRS = (Path("/usr/lib/baresip/modules"), Path("/usr/lib/x86_64-linux-gnu/baresip/modules"),
               Path("/usr/local/lib/baresip/modules"))


def find_baresip() -> tuple[str, Path] | str:
    """(executable, module dir), or why not."""
    exe = shutil.which("baresip")
    if exe is None:
        return "baresip not installed (apt-get install -y baresip)"
    mods = next((d for d in MODULE_DIRS if (d / "ctrl_tcp.so").exists() and (d / "aubridge.so").exists()), None)
    if mods is None:
        return f"baresip modules ctrl_tcp.so/aubridge.so not found in {[str(d) for d in MODULE_DIRS]}"
    return exe, mods


class TraceEntry:
    def __init__(self, proto: str, src: str, dst: str, text: str) -> None:
        self.proto, self.src, self.dst, self.text = proto, src, dst, text
        self.first_line = text.split("\n", 1)[0].strip()

    def header(self, name: str) -> list[str]:
        out = []
        for line in self.text.replace("\r\n", "\n").split("\n\n", 1)[0].split("\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                out.append(value.strip())
        return out

    def __repr__(self) -> str:
        return f"{self.proto} {self.src} -> {self.dst}: {self.first_line}"


class Baresip:
    def __init__(self, ns: Netns, tmp: Path, name: str, sip_ip: str, sip_port: int) -> None:
        found = find_baresip()
        if isinstance(found, str):
            raise RuntimeError(found)
        exe, module_path = found
        self.ns, self.name = ns, name
        self.sip_addr = f"{sip_ip}:{sip_port}"
        self.dir = tmp / f"baresip-{name}"
        self.dir.mkdir(parents=True)
        (self.dir / "config").write_text(CONFIG.format(sip_ip=sip_ip, sip_port=sip_port, ctrl_port=CTRL_PORT,
                                                       module_path=module_path))
        (self.dir / "accounts").write_text("")
        self.out_path = tmp / f"baresip-{name}.out"
        self._out = open(self.out_path, "wb")
        ns.lab.closers.append(self.stop)
        self.proc = ns.popen([exe, "-f", str(self.dir), "-s"], stdin=subprocess.DEVNULL,
                             stdout=self._out, stderr=subprocess.STDOUT)
        self.messages: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._token = 0
        self.sock = self._connect()
        threading.Thread(target=self._reader, daemon=True, name=f"baresip-{name}").start()

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"baresip {self.name} exited at start:\n{self.output()}")
            s = self.ns.socket(kind=socket.SOCK_STREAM)
            s.settimeout(0.5)
            try:
                s.connect(("127.0.0.1", CTRL_PORT))
                s.settimeout(None)
                return s
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise AssertionError(f"baresip {self.name}: ctrl_tcp not reachable:\n{self.output()}") from None
                time.sleep(0.05)

    def _reader(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            buf += data
            while True:  # netstrings: LEN ":" JSON ","
                head, sep, rest = buf.partition(b":")
                if not sep or not head.isdigit() or len(rest) < int(head) + 1:
                    break
                n = int(head)
                msg = json.loads(rest[:n])
                buf = rest[n + 1:]
                with self._cond:
                    self.messages.append(msg)
                    self._cond.notify_all()
        with self._cond:
            self.messages.append({"closed": True})
            self._cond.notify_all()

    def _wait_for(self, match: Callable[[dict[str, Any]], bool], timeout: float, what: str, start: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for msg in self.messages[start:]:
                    if match(msg):
                        return msg
                left = deadline - time.monotonic()
                if left <= 0 or any(m.get("closed") for m in self.messages):
                    raise AssertionError(f"baresip {self.name}: no {what} within {timeout}s; events: {self.event_types()}")
                self._cond.wait(left)

    def command(self, cmd: str, params: str = "", timeout: float = 5) -> str:
        self._token += 1
        token = f"{self.name}-{self._token}"
        body = json.dumps({"command": cmd, "params": params, "token": token}).encode()
        self.sock.sendall(str(len(body)).encode() + b":" + body + b",")
        resp = self._wait_for(lambda m: bool(m.get("response")) and m.get("token") == token, timeout, f"response to {cmd}")
        assert resp.get("ok"), f"baresip {self.name}: {cmd} {params!r} failed: {resp}"
        return ANSI.sub("", str(resp.get("data", "")))

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def wait_event(self, types: set[str], timeout: float, start: int = 0) -> dict[str, Any]:
        return self._wait_for(lambda m: bool(m.get("event")) and m.get("type") in types, timeout,
                              "/".join(sorted(types)), start)

    def event_types(self) -> list[str]:
        return [f"{m.get('type')}({m.get('param', '')})" for m in self.messages if m.get("event")]

    def register(self, line: str, timeout: float = 10) -> dict[str, Any]:
        start = self.mark()
        self.command("uanew", line)
        return self.wait_event({"REGISTER_OK", "REGISTER_FAIL"}, timeout, start)

    def stop(self) -> None:
        if self._out.closed:
            return
        if self.proc.poll() is None:
            try:
                self.command("quit", timeout=3)
            except (AssertionError, OSError):
                pass
            try:
                self.proc.wait(5)
            except Exception:  # noqa: BLE001 - the lab kills it
                self.proc.terminate()
        self.sock.close()
        self._out.close()

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return ANSI.sub("", self.out_path.read_text(errors="replace"))

    def trace(self) -> list[TraceEntry]:
        pat = re.compile(r"^(UDP|TCP|TLS|WS|WSS) (\S+) -> (\S+)\r?\n(.*?)(?=^#\r?\n|\Z)", re.S | re.M)
        return [TraceEntry(m.group(1), m.group(2), m.group(3), m.group(4)) for m in pat.finditer(self.output())]

