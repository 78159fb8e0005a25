"""sipvicious (Debian package ``sipvicious`` 0.3.x: svmap, svwar, svcrack) against the installed
server with authentication on (issue 16).

- svmap finds the server (that is fine: it answers OPTIONS like any SIP server).
- svwar finds no user. svwar tells users apart by the first line of the answer: it first asks
  for a random (surely unknown) extension, keeps that answer as "bad user", then reports every
  name whose answer differs (404 vs 401/407/200...). The server challenges every unauthenticated
  request alike, known user or not (REGISTER 401, OPTIONS and INVITE 407), so svwar either stops
  at its sanity check ("authentication request for an unknown extension") or, with ``--force``,
  gets the "bad user" answer again for the first name it tries and gives up ("We got an unknown
  response"). Because svwar gives up after one name, the runs aim that one name at a configured
  user (``-e142``; a dictionary starting with ``alice``), and
  ``test_answers_to_svwar_probes_do_not_tell_users_apart`` sends svwar's probes for the whole
  range and dictionary itself and compares the answers: svwar's oracle has nothing to work with
  for any of the names, not only for the one it tried.
- svcrack cracks nothing: after ``auth.max_failures`` (5) wrong guesses from one address the
  server answers 403 "Forbidden (too many failed authentications)" without looking at
  credentials, so the rest of the wordlist is never checked. The crack server offers MD5 only:
  svcrack 0.3.3 knows no SHA-256 and crashes on the default challenge set (SHA-256 first), which
  would prove nothing; ``test_svcrack_control_cracks_a_password_in_its_wordlist`` shows that with
  MD5 its guesses are real (it finds a password that is in its list before the ban).

svwar and svcrack loop until an answer-less pause of 3 s (svwar) or forever (svcrack keeps
sending unauthenticated REGISTERs into the 403s), and svwar's ACK to a 407 uses a new branch, so
the server (rightly) keeps retransmitting the 407 until Timer H; runs still going at their
deadline get SIGINT, on which both tools print their results and exit.

Everything is on loopback: the server on 127.0.0.1 (free ports), the tools bound to 127.0.0.1 on
free ports (``-b``/``-x``/``-P``). Under CI=true a missing tool fails; elsewhere it skips.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "tests" / "interop") not in sys.path:
    sys.path.insert(0, str(REPO / "tests" / "interop"))
from serverproc import ServerProcess, free_port, require_tool  # noqa: E402

from sipserver.auth.digest import compute_response, ha1  # noqa: E402

pytestmark = pytest.mark.interop

DOMAIN = "example.com"
HOST = "127.0.0.1"
USERS = {"alice": "Wonderland-7", "142": "Ext-142-secret"}  # 142 lies inside svwar's range
MAX_FAILURES = 5
SVWAR_RANGE = "100-200"
# alice first: svwar gives up after the first name it tries (see the module docstring)
DICTIONARY = ["alice", "142", "admin", "bob", "operator", "test", "1000"]
WRONG_PASSWORDS = [
    "wonderland", "Wonderland", "Wonderland7", "wonderland-7", "Wonderland-8", "alice",
    "password", "123456", "secret", "qwerty", "letmein", "changeme",
]
SVWAR_DEADLINE = 4.5  # s; non-INVITE runs end by themselves after ~3 s
CRACK_DEADLINE = 10.0


# --------------------------------------------------------------------------------------------
# tools


def sipvicious_tool(name: str) -> str:
    """``svwar`` (Debian) or ``sipvicious_svwar`` (pip); skip locally / fail in CI if neither."""
    for candidate in (name, f"sipvicious_{name}"):
        path = shutil.which(candidate)
        if path is not None:
            return path
    return require_tool(name, "apt-get install sipvicious")


def _default_sigint() -> None:
    # a test run started in the background inherits an ignored SIGINT; the tools need it to stop
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Tool:
    """One sipvicious process, stdout and stderr (in order) in ``workdir/NAME.out``."""

    def __init__(self, exe: str, args: list[str], workdir: Path, name: str) -> None:
        self.name = name
        self.args = [exe, *args]
        self.path = workdir / f"{name}.out"
        self.interrupted = False
        self._out = open(self.path, "wb")
        env = dict(os.environ, HOME=str(workdir), PYTHONUNBUFFERED="1")  # ~/.sipvicious stays here
        self.proc = subprocess.Popen(self.args, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(workdir), env=env,
                                     preexec_fn=_default_sigint)

    def finish(self, deadline: float) -> str:
        """Wait until ``deadline`` (time.monotonic()), then SIGINT: the tool prints its results."""
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.interrupted = True
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.output()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._out.closed:
            self._out.close()

    def output(self) -> str:
        return self.path.read_text(errors="replace")

    def report(self, limit: int = 6000) -> str:
        how = " (stopped with SIGINT at its deadline)" if self.interrupted else ""
        return f"--- {self.name}{how}: {' '.join(self.args)}\n{self.output()[-limit:]}\n"


def local_args(taken: set[int]) -> list[str]:
    """Bind the tool to 127.0.0.1 on a free port and put 127.0.0.1 in its Via/Contact."""
    while (port := free_port()) in taken:
        pass
    taken.add(port)
    return ["-b", HOST, "-x", HOST, "-P", str(port)]


# --------------------------------------------------------------------------------------------
# a small SIP client of our own (UDP): svwar's probes, a registration, the post-ban check


class Answer:
    def __init__(self, text: str) -> None:
        self.text = text
        head, _, self.body = text.partition("\r\n\r\n")
        self.first, *lines = head.split("\r\n")
        self.status = int(self.first.split(" ", 2)[1])
        self.headers = [(n.strip(), v.strip()) for n, _, v in (ln.partition(":") for ln in lines)]

    def get(self, *names: str) -> list[str]:
        wanted = {n.lower() for n in names}
        return [v for n, v in self.headers if n.lower() in wanted]

    @property
    def call_id(self) -> str:
        return self.get("Call-ID", "i")[0]


class Udp:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]

    def send(self, text: str, port: int) -> None:
        self.sock.sendto(text.encode(), (HOST, port))

    def collect(self, done: Callable[[list[Answer]], bool], timeout: float) -> list[Answer]:
        got: list[Answer] = []
        deadline = time.monotonic() + timeout
        while not done(got) and (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                break
            if data.startswith(b"SIP/2.0 "):
                got.append(Answer(data.decode(errors="replace")))
        return got

    def close(self) -> None:
        self.sock.close()


def request(method: str, name: str, local_port: int, *, call_id: str, branch: str, tag: str,
            cseq: int = 1, ruri: str | None = None, to_tag: str | None = None,
            contact: str | None = None, extra: list[str] | None = None) -> str:
    """A request shaped like svwar's (sipvicious makeRequest): REGISTER goes to sip:DOMAIN,
    OPTIONS and INVITE to sip:NAME@DOMAIN; From and To both name the probed user."""
    if ruri is None:
        ruri = f"sip:{DOMAIN}" if method == "REGISTER" else f"sip:{name}@{DOMAIN}"
    addr = f'"{name}"<sip:{name}@{DOMAIN}>'
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP {HOST}:{local_port};branch={branch};rport",
        "Max-Forwards: 70",
        f"To: {addr}" + (f";tag={to_tag}" if to_tag else ""),
        f"From: {addr};tag={tag}",
        "User-Agent: friendly-scanner",
        f"Call-ID: {call_id}",
        f"Contact: {contact or f'sip:{name}@{DOMAIN}'}",
        f"CSeq: {cseq} {method}",
        "Accept: application/sdp",
        *(extra or []),
        "Content-Length: 0",
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


def register(server_port: int, user: str, password: str) -> Answer:
    """An authenticated REGISTER (first challenge offered), so the scans meet a registered user
    (alice), a configured one without bindings (142) and unknown names."""
    udp = Udp()
    try:
        call_id, tag = secrets.token_hex(8), secrets.token_hex(4)
        contact, expires = f"<sip:{user}@{HOST}:{udp.port}>", ["Expires: 600"]
        udp.send(request("REGISTER", user, udp.port, call_id=call_id, branch=f"z9hG4bK{secrets.token_hex(6)}",
                         tag=tag, contact=contact, extra=expires), server_port)
        challenge = udp.collect(lambda got: any(a.status >= 200 for a in got), 5)[-1]
        assert challenge.status == 401, challenge.text
        text = challenge.get("WWW-Authenticate")[0]
        p = dict(re.findall(r'(\w+)="?([^",]+)"?', text.split(" ", 1)[1]))
        alg, uri, nc, cnonce = p.get("algorithm", "MD5"), f"sip:{DOMAIN}", "00000001", secrets.token_hex(4)
        digest = compute_response(alg, ha1(user, p["realm"], password, alg), p["nonce"], nc, cnonce, "auth", "REGISTER", uri)
        auth = (f'Authorization: Digest username="{user}", realm="{p["realm"]}", nonce="{p["nonce"]}", '
                f'uri="{uri}", response="{digest}", algorithm={alg}, cnonce="{cnonce}", qop=auth, nc={nc}, '
                f'opaque="{p.get("opaque", "")}"')
        udp.send(request("REGISTER", user, udp.port, call_id=call_id, branch=f"z9hG4bK{secrets.token_hex(6)}",
                         tag=tag, cseq=2, contact=contact, extra=[*expires, auth]), server_port)
        return udp.collect(lambda got: any(a.status >= 200 for a in got), 5)[-1]
    finally:
        udp.close()


def shape(answer: Answer, name: str) -> tuple[str, ...]:
    """The answer with what differs per request masked (the probed name where the request put
    it, tags, branch, Call-ID, nonce): what is left is what could tell one user from another."""
    out = [answer.first]
    for hname, value in answer.headers:
        key = hname.lower()
        if key in ("from", "to", "f", "t"):
            value = re.sub(r";tag=[^;>\s]+", ";tag=*", value).replace(f'"{name}"<sip:{name}@', '"NAME"<sip:NAME@')
        elif key in ("via", "v"):
            value = re.sub(r"branch=[^;\s]+", "branch=*", value)
        elif key in ("call-id", "i"):
            value = "*"
        elif key in ("www-authenticate", "proxy-authenticate"):
            value = re.sub(r'nonce="[^"]*"', 'nonce="*"', value)
        out.append(f"{key}: {value}")
    return (*out, answer.body)


# --------------------------------------------------------------------------------------------
# servers


def users_toml() -> str:
    return "".join(f'\n[users."{name}"]\npassword = "{pw}"\n' for name, pw in USERS.items())


@pytest.fixture(scope="module")
def scan_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Default auth settings, alice registered. The per-address rate limiter is off: the scans
    come from 127.0.0.1 in bursts, and its refusals would muddy the comparison of answers.
    (No sipvicious needed: the probe comparison below runs without it.)"""
    srv = ServerProcess(tmp_path_factory.mktemp("scan-server"),
                        config="[rate_limit]\nenabled = false\n" + users_toml())
    try:
        ok = register(srv.port, "alice", USERS["alice"])
        assert ok.status == 200, ok.text + "\n" + srv.output()[-4000:]
        yield srv
    finally:
        code = srv.stop()
    assert code == 0, f"server exit code {code}\n{srv.output()[-8000:]}"


class CrackServer(ServerProcess):
    def __init__(self, tmp_path: Path) -> None:
        self.mgmt_port = free_port()
        cfg = (f'[auth]\nmax_failures = {MAX_FAILURES}\nalgorithms = ["MD5"]\n'
               f'[mgmt]\nlisten = "{HOST}:{self.mgmt_port}"\n' + users_toml())
        super().__init__(tmp_path, config=cfg)

    def stats(self) -> dict[str, Any]:
        # The management listener may come up a moment after the SIP listeners the start-up
        # wait watches: a refused connection is retried for a few seconds, then reported.
        deadline = time.monotonic() + 5
        while True:
            conn = http.client.HTTPConnection(HOST, self.mgmt_port, timeout=5)
            try:
                conn.request("GET", "/stats")
                resp = conn.getresponse()
                assert resp.status == 200
                return json.loads(resp.read())
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                conn.close()


@pytest.fixture
def crack_server(tmp_path: Path) -> Iterator[CrackServer]:
    """auth.max_failures = 5, MD5 challenges only, the management API for the counters; one per
    test, the ban being per source address (everything comes from 127.0.0.1)."""
    sipvicious_tool("svcrack")
    (tmp_path / "server").mkdir()
    srv = CrackServer(tmp_path / "server")
    try:
        yield srv
    finally:
        code = srv.stop()
    assert code == 0, f"server exit code {code}\n{srv.output()[-8000:]}"


# --------------------------------------------------------------------------------------------
# svmap


def test_svmap_finds_the_server(scan_server: ServerProcess, tmp_path: Path) -> None:
    """svmap's OPTIONS gets an answer naming the server: the server is found (by design)."""
    svmap = Tool(sipvicious_tool("svmap"), ["-v", *local_args(set()), "-p", str(scan_server.port), HOST],
                 tmp_path, "svmap")
    out = svmap.finish(time.monotonic() + 10)
    assert re.search(rf"{re.escape(HOST)}:{scan_server.port}\s*\|\s*sipserver", out), svmap.report()


# --------------------------------------------------------------------------------------------
# svwar


def test_svwar_finds_no_user(scan_server: ServerProcess, tmp_path: Path) -> None:
    """svwar with REGISTER, OPTIONS and INVITE over the range 100-200 (142 is a user), a
    dictionary starting with alice (registered) and 142 alone, all with --force, plus one plain
    run: no extension reported, and each --force run did get past its "bad user" probe, so its
    comparison really ran (on the configured user, for the -e142 and dictionary runs)."""
    svwar = sipvicious_tool("svwar")
    words = tmp_path / "extensions.txt"
    words.write_text("".join(f"{w}\n" for w in DICTIONARY))
    target = ["-p", str(scan_server.port), "--domain", DOMAIN, HOST]
    runs: list[tuple[str, list[str], str | None]] = [("register-plain", ["-m", "REGISTER", f"-e{SVWAR_RANGE}"], None)]
    for method in ("REGISTER", "OPTIONS", "INVITE"):
        runs += [
            (f"{method.lower()}-range", ["--force", "-m", method, f"-e{SVWAR_RANGE}"], "100"),
            (f"{method.lower()}-dictionary", ["--force", "-m", method, "-d", str(words)], DICTIONARY[0]),
            (f"{method.lower()}-142", ["--force", "-m", method, "-e142"], "142"),
        ]
    taken: set[int] = set()
    tools = [(Tool(svwar, ["-v", "--debug", *local_args(taken), *args, *target], tmp_path, name), first)
             for name, args, first in runs]
    deadline = time.monotonic() + SVWAR_DEADLINE
    try:
        outputs = [(tool, tool.finish(deadline), first) for tool, first in tools]
    finally:
        for tool, _ in tools:
            tool.kill()

    problems: list[str] = []
    for tool, out, first in outputs:
        found = re.findall(r"extension '([^']*)' (exists|probably exists)[^\n]*", out)
        if found or "| Extension" in out or "found nothing" not in out:
            problems.append(f"{tool.name}: svwar reports {found or 'a result table'}\n{tool.report()}")
            continue
        if first is None:  # no --force: svwar's own sanity check stops it
            if "authentication request for an unknown extension" not in out:
                problems.append(f"{tool.name}: expected svwar's sanity check to stop it\n{tool.report()}")
            continue
        if "Ok SIP device found" not in out:
            problems.append(f"{tool.name}: svwar never got past its first probe\n{tool.report()}")
        elif f'"{first}"<sip:{first}@{DOMAIN}>' not in out.split("Ok SIP device found", 1)[1]:
            problems.append(f"{tool.name}: svwar got no answer for {first!r}\n{tool.report()}")
    assert not problems, "\n".join(problems) + "--- server log (tail):\n" + scan_server.output()[-4000:]


def probe(udp: Udp, server_port: int, method: str, names: list[str]) -> dict[str, Answer]:
    """svwar's probe for each name at once; the final answer for each (non-2xx answers to
    INVITE ACKed as a UA must: same branch, the answer's To tag)."""
    sent: dict[str, tuple[str, str, str]] = {}  # Call-ID -> name, branch, From tag
    for name in names:
        call_id, branch, tag = secrets.token_hex(8), f"z9hG4bK-{secrets.token_hex(5)}", secrets.token_hex(4)
        sent[call_id] = (name, branch, tag)
        udp.send(request(method, name, udp.port, call_id=call_id, branch=branch, tag=tag), server_port)
    calls = set(sent)
    answers = udp.collect(lambda got: {a.call_id for a in got if a.status >= 200} >= calls, 10)
    finals: dict[str, Answer] = {}
    for a in answers:
        if a.status < 200 or a.call_id not in sent or sent[a.call_id][0] in finals:
            continue
        name, branch, tag = sent[a.call_id]
        finals[name] = a
        if method == "INVITE" and a.status >= 300:
            to_tag = re.search(r";tag=([^;>\s]+)", a.get("To", "t")[0])
            udp.send(request("ACK", name, udp.port, call_id=a.call_id, branch=branch, tag=tag,
                             ruri=f"sip:{name}@{DOMAIN}", to_tag=to_tag.group(1) if to_tag else None),
                     server_port)
    return finals


def test_answers_to_svwar_probes_do_not_tell_users_apart(scan_server: ServerProcess) -> None:
    """svwar's probes for every name of the range and the dictionary (and a random unknown
    one), with REGISTER, OPTIONS and INVITE: per method, one answer for all once the per-request
    parts are masked (``shape``): svwar's oracle has nothing for any name, registered (alice),
    configured (142) or unknown."""
    names = list(dict.fromkeys([str(n) for n in range(100, 201)] + DICTIONARY + [f"u{secrets.token_hex(4)}"]))
    assert set(USERS) <= set(names)
    udp = Udp()
    leaks: list[str] = []
    try:
        for method in ("REGISTER", "OPTIONS", "INVITE"):
            finals = probe(udp, scan_server.port, method, names)
            missing = [n for n in names if n not in finals]
            assert not missing, f"{method}: no final answer for {missing[:20]}"
            groups: dict[tuple[str, ...], list[str]] = {}
            for name, answer in finals.items():
                groups.setdefault(shape(answer, name), []).append(name)
            if len(groups) != 1:
                leaks.append(f"{method}: {len(groups)} different answers:\n" + "\n".join(
                    f"  for {sorted(g)[:12]}{' ...' if len(g) > 12 else ''}:\n    " + "\n    ".join(s)
                    for s, g in groups.items()))
    finally:
        udp.close()
    assert not leaks, "\n".join(leaks)


# --------------------------------------------------------------------------------------------
# svcrack


def svcrack(crack_server: CrackServer, tmp_path: Path, words: list[str], name: str) -> Tool:
    wordlist = tmp_path / f"{name}-words.txt"
    wordlist.write_text("".join(f"{w}\n" for w in words))
    return Tool(sipvicious_tool("svcrack"),
                ["-vv", *local_args(set()), "-u", "alice", "-d", str(wordlist), "-p", str(crack_server.port),
                 "--domain", DOMAIN, HOST], tmp_path, name)


def test_svcrack_control_cracks_a_password_in_its_wordlist(crack_server: CrackServer, tmp_path: Path) -> None:
    """The check on the check: alice's password third in the list (two failures, below the
    ban) is found, so svcrack's digests are real and "found nothing" below means the ban."""
    run = svcrack(crack_server, tmp_path, ["123456", "password", USERS["alice"], "qwerty"], "svcrack-control")
    out = run.finish(time.monotonic() + CRACK_DEADLINE)
    assert f"The password for alice is {USERS['alice']}" in out, run.report() + crack_server.output()[-4000:]


def test_svcrack_is_banned_after_max_failures(crack_server: CrackServer, tmp_path: Path) -> None:
    """A wordlist without alice's password: the server checks exactly auth.max_failures (5)
    guesses, then answers 403 "Forbidden (too many failed authentications)" and never looks at
    credentials from 127.0.0.1 again; svcrack reports nothing."""
    before = crack_server.stats()["counters"]
    run = svcrack(crack_server, tmp_path, WRONG_PASSWORDS, "svcrack")
    deadline = time.monotonic() + CRACK_DEADLINE
    try:
        # svcrack keeps sending unauthenticated REGISTERs into the 403s: stop it once banned
        while time.monotonic() < deadline and run.proc.poll() is None:
            if crack_server.stats()["counters"].get("auth_banned", 0) >= 3:
                break
            time.sleep(0.05)
        out = run.finish(time.monotonic() + 0.2)
    finally:
        run.kill()
    stats = crack_server.stats()
    counters, responses = stats["counters"], stats["responses"]
    why = f"{run.report()}--- stats: {json.dumps(stats)}\n--- server log (tail):\n{crack_server.output()[-4000:]}"

    assert "The password for" not in out and "| Password" not in out, why
    assert "found nothing" in out, why
    assert counters.get("auth_failures", 0) - before.get("auth_failures", 0) == MAX_FAILURES, why
    assert counters.get("auth_banned", 0) >= 1 and responses.get("403", 0) >= 1, why
    assert "200" not in responses, why
    tried = re.findall(r"DEBUG:ASipOfRedWine:trying (.*)", out)
    # one more guess than max_failures: svcrack answers the challenge that came with the 5th
    # failure; that one is refused unread (banned), and no challenge comes after it
    assert len(tried) <= MAX_FAILURES + 1, why

    udp = Udp()
    try:
        udp.send(request("REGISTER", "alice", udp.port, call_id=secrets.token_hex(8),
                         branch=f"z9hG4bK{secrets.token_hex(6)}", tag=secrets.token_hex(4)), crack_server.port)
        answer = udp.collect(lambda got: any(a.status >= 200 for a in got), 5)
    finally:
        udp.close()
    assert answer and answer[-1].first == "SIP/2.0 403 Forbidden (too many failed authentications)", why
