"""Real networks for the NAT tests: Linux network namespaces joined by veth pairs, a NAT router
made of iptables rules inside its own namespace, and the server as a subprocess in another.

Invariants (the traffic rule of the project):
- every address used lives inside namespaces created here (public side 100.64.0.0/16, private
  side 10.199.0.0/16); the root namespace gets no interface, no address, no route, no iptables
  rule: veth ends are created directly inside their namespaces (``ip link add ... netns``);
- every namespace name starts with ``sipnat<pid>x`` and is deleted by ``Lab.close`` (a
  ``finally``), which first ends the processes the lab started; iptables rules and conntrack
  sysctls live in the namespace and vanish with it; namespaces left by a killed earlier run
  (its pid gone) are removed at the next run;
- sockets are opened inside a namespace by a short-lived thread that ``setns``es itself there
  (network namespaces are per thread); the socket keeps its namespace after the thread ends, so
  the test drives it like any other socket.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
PREFIX = "sipnat"
CLONE_NEWNET = 0x40000000
DOMAIN = "example.com"

# The addresses of the phone-behind-NAT topology (the same in every lab: labs never share a
# namespace, so their address plans cannot meet).
SRV_IP = "100.64.0.10"       # server (and UAs on the server side), public side
NAT_PUBLIC_IP = "100.64.0.1"  # the NAT router's public address: what the server sees
NAT_PRIVATE_IP = "10.199.0.1"
PHONE_IP = "10.199.0.2"       # the phone's private address: the server can never reach it

_libc = ctypes.CDLL(None, use_errno=True)
_seq = itertools.count(1)
_seq_lock = threading.Lock()
T = TypeVar("T")
LabT = TypeVar("LabT", bound="Lab")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


class LabUnavailable(Exception):
    """Namespaces, veths or iptables cannot be used here (the message says why)."""


def _run(cmd: Sequence[str], check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def check_lab_support() -> None:
    """Raise LabUnavailable unless this host can build the labs: root, ip, iptables, conntrack
    and a working namespace with a veth pair, a NAT rule and per-namespace conntrack sysctls."""
    if os.geteuid() != 0:
        raise LabUnavailable("the NAT tests need root (network namespaces and iptables)")
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables"), ("conntrack", "conntrack")):
        if shutil.which(tool) is None:
            raise LabUnavailable(f"{tool} not installed (apt-get install -y {package})")
    sweep_stale()
    lab = Lab("probe")
    try:
        a, b = lab.netns("a"), lab.netns("b")
        lab.link(a, "p0", "100.64.250.1/24", b, "p1", "100.64.250.2/24")
        b.sh("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "p1", "-j", "MASQUERADE")
        b.sysctl("net.netfilter.nf_conntrack_udp_timeout", "10")
        if b.sh("sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout").stdout.strip() != "10":
            raise LabUnavailable("nf_conntrack_udp_timeout is not settable per namespace")
    except (RuntimeError, OSError) as exc:
        raise LabUnavailable(f"cannot build a namespace lab: {exc}") from None
    finally:
        lab.close()


def sweep_stale() -> None:
    """Delete labs whose creating test process is gone (a run killed before its cleanup)."""
    out = _run(["ip", "netns", "list"], check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        pid_text = name[len(PREFIX):].split("x", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or Path(f"/proc/{pid_text}").exists():
            continue
        for pid in _run(["ip", "netns", "pids", name], check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)  # left by our own earlier run, inside our namespace
            except (ProcessLookupError, ValueError):
                pass
        _run(["ip", "netns", "delete", name], check=False)


def _in_thread_in_netns(name: str, fn: Callable[[], T]) -> T:
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({name}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=body, name=f"setns-{name}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


class Netns:
    """One namespace of a lab."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab, self.name = lab, name

    def sh(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "netns", "exec", self.name, *cmd], check=check)

    def sysctl(self, key: str, value: str) -> None:
        self.sh("sysctl", "-q", "-w", f"{key}={value}")

    def popen(self, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        """A process inside the namespace (`ip netns exec` execs it: the pid is the program's),
        ended by the lab's close."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)
        self.lab.procs.append(proc)
        return proc

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
        return _in_thread_in_netns(self.name, lambda: socket.socket(family, kind))

    def call(self, fn: Callable[[], T]) -> T:
        """Run fn in a thread inside the namespace (e.g. a blocking connect for a socket)."""
        return _in_thread_in_netns(self.name, fn)

    def conntrack(self, *args: str) -> str:
        return self.sh("conntrack", "-L", *args, check=False).stdout

    def __repr__(self) -> str:
        return self.name


class Lab:
    """A set of namespaces torn down together (processes first, then namespaces)."""

    def __init__(self, tag: str) -> None:
        with _seq_lock:
            n = next(_seq)
        self.base = f"{PREFIX}{os.getpid()}x{n}{tag[:4]}"
        self.namespaces: list[Netns] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.closers: list[Callable[[], None]] = []

    def netns(self, role: str) -> Netns:
        name = f"{self.base}-{role}"
        _run(["ip", "netns", "add", name])
        ns = Netns(self, name)
        self.namespaces.append(ns)
        ns.sh("ip", "link", "set", "lo", "up")
        return ns

    def link(self, a: Netns, a_if: str, a_addr: str, b: Netns, b_if: str, b_addr: str) -> None:
        """A veth pair with one end in each namespace (never in the root namespace)."""
        _run(["ip", "link", "add", a_if, "netns", a.name, "type", "veth", "peer", "name", b_if, "netns", b.name])
        for ns, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
            ns.sh("ip", "addr", "add", addr, "dev", ifname)
            ns.sh("ip", "link", "set", ifname, "up")

    def close(self) -> None:
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception:  # noqa: BLE001 - cleanup goes on whatever one step does
                pass
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in reversed(self.namespaces):
            # Anything still inside was started by this lab (e.g. a child a process left behind).
            for pid in _run(["ip", "netns", "pids", ns.name], check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _run(["ip", "netns", "delete", ns.name], check=False)
        self.namespaces.clear()

    def __enter__(self: LabT) -> LabT:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PhoneLab(Lab):
    """server side (srv) -- NAT router (nat) -- phone's LAN (phone).

    The router masquerades the phone's LAN behind NAT_PUBLIC_IP with random source ports (so
    the public port differs from the phone's), and forgets an idle UDP mapping after
    ``udp_timeout`` seconds. srv has no route to the private side: the phone's Contact is
    unreachable, only the NAT mapping leads to it."""

    def __init__(self, tag: str, udp_timeout: int = 10) -> None:
        super().__init__(tag)
        try:
            self.srv, self.nat, self.phone = self.netns("srv"), self.netns("nat"), self.netns("phone")
            self.link(self.srv, "pub0", f"{SRV_IP}/24", self.nat, "pub1", f"{NAT_PUBLIC_IP}/24")
            self.link(self.phone, "lan0", f"{PHONE_IP}/24", self.nat, "lan1", f"{NAT_PRIVATE_IP}/24")
            self.phone.sh("ip", "route", "add", "default", "via", NAT_PRIVATE_IP)
            self.nat.sysctl("net.ipv4.ip_forward", "1")
            self.nat.sh("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "pub1", "-j", "MASQUERADE", "--random")
            # The private side is the inside: nothing from the public side is forwarded to it
            # unless conntrack knows the mapping (no port forwarding, no hairpin).
            self.nat.sh("iptables", "-A", "FORWARD", "-i", "pub1", "-o", "lan1", "-m", "conntrack",
                        "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
            self.nat.sh("iptables", "-A", "FORWARD", "-i", "pub1", "-o", "lan1", "-j", "DROP")
            for key in ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"):
                self.nat.sysctl(f"net.netfilter.{key}", str(udp_timeout))
        except BaseException:
            self.close()
            raise

    def udp_mappings(self) -> str:
        """The router's UDP conntrack entries (its NAT mappings)."""
        return self.nat.conntrack("-p", "udp")


class ServerNatLab(Lab):
    """A client on the public side (client) -- a 1:1 NAT router (srvnat) -- the server (srv).

    The server listens on its private address; the router maps PUBLIC_IP:public_port to
    PRIVATE_IP:private_port (DNAT inbound, SNAT for what the server starts), as a cloud VM's
    elastic address does."""

    CLIENT_IP = "100.64.1.2"
    ROUTER_IP = "100.64.1.1"
    PUBLIC_IP = "100.64.1.10"
    PRIVATE_IP = "10.199.1.2"
    ROUTER_PRIVATE_IP = "10.199.1.1"

    def __init__(self, tag: str, ports: Sequence[tuple[str, int, int]]) -> None:
        """ports: (protocol "udp"/"tcp", public port, private port) mappings."""
        super().__init__(tag)
        try:
            self.client, self.router, self.srv = self.netns("cli"), self.netns("rtr"), self.netns("srv")
            self.link(self.client, "pub0", f"{self.CLIENT_IP}/24", self.router, "pub1", f"{self.ROUTER_IP}/24")
            self.router.sh("ip", "addr", "add", f"{self.PUBLIC_IP}/32", "dev", "pub1")
            self.link(self.srv, "lan0", f"{self.PRIVATE_IP}/24", self.router, "lan1", f"{self.ROUTER_PRIVATE_IP}/24")
            self.srv.sh("ip", "route", "add", "default", "via", self.ROUTER_PRIVATE_IP)
            self.router.sysctl("net.ipv4.ip_forward", "1")
            for proto, public_port, private_port in ports:
                self.router.sh("iptables", "-t", "nat", "-A", "PREROUTING", "-d", self.PUBLIC_IP, "-p", proto,
                               "--dport", str(public_port), "-j", "DNAT",
                               "--to-destination", f"{self.PRIVATE_IP}:{private_port}")
                self.router.sh("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", self.PRIVATE_IP, "-p", proto,
                               "--sport", str(private_port), "-j", "SNAT",
                               "--to-source", f"{self.PUBLIC_IP}:{public_port}")
            self.router.sh("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", self.PRIVATE_IP, "-j", "SNAT",
                           "--to-source", self.PUBLIC_IP)
        except BaseException:
            self.close()
            raise


class ServerProc:
    """`sipserver run` inside a namespace, its log in a file; stopped by the lab."""

    def __init__(self, ns: Netns, tmp: Path, listen: list[str], config: str = "", wait_tcp: tuple[str, int] | None = None) -> None:
        self.ns = ns
        tmp.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp / "server.log"
        args = [sys.executable, "-m", "sipserver", "run", "--data-dir", str(tmp / "data"),
                "--domain", DOMAIN, "--log-level", "debug"]
        if config:
            (tmp / "server.toml").write_text(config)
            args += ["-c", str(tmp / "server.toml")]
        for spec in listen:
            args += ["--listen", spec]
        self._log = open(self.log_path, "ab")  # a restarted server appends
        ns.lab.closers.append(self._log.close)
        self.proc = ns.popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(tmp))
        ns.lab.closers.append(self.stop)
        self._wait_ready(wait_tcp)

    def _wait_ready(self, tcp: tuple[str, int] | None) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited at start ({self.proc.returncode}):\n{self.output()}")
            if tcp is None:
                if "INFO sipserver: listening on" in self.output() and "authentication is" in self.output():
                    return
            else:
                s = self.ns.socket(kind=socket.SOCK_STREAM)
                try:
                    s.settimeout(0.3)
                    s.connect(tcp)
                    return
                except OSError:
                    pass
                finally:
                    s.close()
            time.sleep(0.05)
        raise RuntimeError(f"server did not start within 20 s:\n{self.output()}")

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
