"""DESIGN.md layering: the sans-IO packages are a library fed bytes, flows and ``now`` (issue 15).

One test over every module file of the sans-IO packages, found by walking their directories, so a
new module is covered without touching this file. Each module's source is checked statically
with ``ast`` (every ``import``/``from ... import`` anywhere in the file, relative imports resolved):
1. no event loop, socket or thread library (``FORBIDDEN_LIBRARIES``);
2. nothing from the IO side of sipserver (``FORBIDDEN_SIPSERVER``): data flows down, never back up;
3. no clock read (``CLOCK_READS``): time is passed in as ``now``, so timers are testable.
Then, dynamically, all of them are imported in a fresh interpreter (pytest-trio has already
imported trio here) and trio must still be absent from ``sys.modules``.

File IO (``os``, ``sqlite3``) is allowed: it is neither a socket, nor trio, nor a clock.
Known exceptions live in ``ALLOWED`` with the reason; an entry that no longer matches fails too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[2]

SANS_IO_PACKAGES = (
    "sipserver.sip",
    "sipserver.transaction",
    "sipserver.outbound",
    "sipserver.registrar",
    "sipserver.proxy",
    "sipserver.auth",
)

# Top-level libraries that mean an event loop, a socket or a thread.
FORBIDDEN_LIBRARIES = (
    "trio",
    "trio_websocket",
    "wsproto",
    "socket",
    "select",
    "selectors",
    "asyncio",
    "ssl",
    "threading",
    "subprocess",
)

# The IO side of sipserver: the sans-IO core never reaches up into it.
FORBIDDEN_SIPSERVER = (
    "sipserver.transport",
    "sipserver.runtime",
    "sipserver.forwarding",
    "sipserver.media_glue",
    "sipserver.commit",
    "sipserver.service",
    "sipserver.parts",
    "sipserver.clock",
    "sipserver.store_writer",
    "sipserver.mgmt",
    "sipserver.config",
    "sipserver.cli",
)

# Fully qualified names whose call (or mere reference, e.g. as a default ``clock=``) reads the clock.
CLOCK_READS = frozenset(
    {
        "time.time",
        "time.time_ns",
        "time.monotonic",
        "time.monotonic_ns",
        "time.perf_counter",
        "time.perf_counter_ns",
        "time.clock_gettime",
        "time.clock_gettime_ns",
        "datetime.datetime.now",
        "datetime.datetime.utcnow",
        "datetime.datetime.today",
        "datetime.date.today",
    }
)

# (path relative to the repo root, Violation.rule) -> why it is fine. Keep it short and honest;
# a clock read found here gets "TODO(lead)" and goes to the lead, it is not a permanent answer.
# Empty today. Not needed because not forbidden: file IO with ``os`` in outbound/keyfile.py,
# auth/credentials.py and registrar/sqlite_store.py, ``sqlite3`` in registrar/sqlite_store.py,
# ``os.urandom`` in sip/randomness.py.
ALLOWED: dict[tuple[str, str], str] = {}


@attrs.frozen
class Violation:
    path: str
    line: int
    what: str
    rule: str  # the forbidden library, sipserver part or clock function it hit (ALLOWED's key)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


# --------------------------------------------------------------------------- the static checker


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sans_io_files(root: Path = ROOT) -> list[Path]:
    """Every ``.py`` file under each sans-IO package directory (subpackages included)."""
    files: list[Path] = []
    for package in SANS_IO_PACKAGES:
        directory = root.joinpath(*package.split("."))
        assert (directory / "__init__.py").is_file(), f"{package} is not a package at {directory}"
        files.extend(sorted(directory.rglob("*.py")))
    return files


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` names; relative levels count from the package."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute dotted name) for every import anywhere in the tree, functions included.

    ``from a import b`` yields both ``a`` and ``a.b`` (b may be a submodule, as in
    ``from sipserver import transport``). Literal ``importlib.import_module("x")`` and
    ``__import__("x")`` count as imports too.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_from(node, module, is_package)
            yield node.lineno, source
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{source}.{alias.name}" if source else alias.name
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and _dotted(node.func) in ("importlib.import_module", "__import__", "import_module")
        ):
            yield node.lineno, node.args[0].value


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, None for anything else."""
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    names.append(node.id)
    return ".".join(reversed(names))


def _is_under(name: str, prefixes: tuple[str, ...]) -> str | None:
    for prefix in prefixes:
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    return None


def _clock_reads(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, qualified name) for every reference to a clock function.

    Aliases are tracked file-wide (scopes are ignored: a module that shadows ``time`` with
    something else would only produce a false alarm, never hide a read).
    """
    aliases: dict[str, str] = {}  # local name -> qualified name
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:  # ``import a.b`` binds ``a``
                    top = alias.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if alias.name == "*":  # ``from time import *`` binds every clock function
                    for read in CLOCK_READS:
                        if read.rpartition(".")[0] == node.module:
                            aliases[read.rpartition(".")[2]] = read
                    continue
                qualified = f"{node.module}.{alias.name}"
                aliases[alias.asname or alias.name] = qualified
                if qualified in CLOCK_READS:  # ``from time import monotonic`` is the read's start
                    yield node.lineno, qualified
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Attribute, ast.Name)):
            continue
        dotted = _dotted(node)
        if dotted is None:
            continue
        head, _, rest = dotted.partition(".")
        if head not in aliases:
            continue
        qualified = aliases[head] + ("." + rest if rest else "")
        if qualified in CLOCK_READS:
            yield node.lineno, qualified


def check_source(source: str, path: str, module: str, is_package: bool = False) -> list[Violation]:
    """Every layering violation in one module's source."""
    tree = ast.parse(source, filename=path)
    found: dict[tuple[int, str], Violation] = {}  # ``from a import b`` names a and a.b: one each
    for line, name in _imports(tree, module, is_package):
        library = _is_under(name, FORBIDDEN_LIBRARIES)
        if library is not None:
            what = f"imports {name} ({library}: IO library)"
            found.setdefault((line, library), Violation(path, line, what, library))
        part = _is_under(name, FORBIDDEN_SIPSERVER)
        if part is not None:
            what = f"imports {name} ({part}: IO side of sipserver)"
            found.setdefault((line, part), Violation(path, line, what, part))
    for line, name in _clock_reads(tree):
        found.setdefault((line, name), Violation(path, line, f"reads the clock: {name}", name))
    return sorted(found.values(), key=lambda v: (v.path, v.line, v.what))


# --------------------------------------------------------------------------- the layering test


def layering_report(
    root: Path = ROOT, allowed: dict[tuple[str, str], str] = ALLOWED
) -> tuple[list[str], list[tuple[str, str]]]:
    """(violations not in ``allowed``, ``allowed`` entries that matched nothing) under ``root``."""
    violations: list[Violation] = []
    for path in sans_io_files(root):
        violations += check_source(
            path.read_text(encoding="utf-8"),
            path.relative_to(root).as_posix(),
            module_name(path, root),
            is_package=path.name == "__init__.py",
        )
    bad = [str(v) for v in violations if (v.path, v.rule) not in allowed]
    stale = sorted(set(allowed) - {(v.path, v.rule) for v in violations})
    return bad, stale


def test_sans_io_packages_keep_to_their_layer() -> None:
    assert len(sans_io_files()) > len(SANS_IO_PACKAGES)
    bad, stale = layering_report()
    assert not bad, "sans-IO layering violated (DESIGN.md):\n" + "\n".join(bad)
    assert not stale, f"ALLOWED entries that match nothing any more, remove them: {stale}"


def test_walk_covers_new_modules_and_honours_allowed(tmp_path: Path) -> None:
    """Control: a module added deep in a package is scanned; ALLOWED silences only its entry."""
    for package in SANS_IO_PACKAGES:
        directory = tmp_path.joinpath(*package.split("."))
        directory.mkdir(parents=True)
        (directory / "__init__.py").write_text("")
    new = tmp_path / "sipserver" / "proxy" / "extra" / "new.py"
    new.parent.mkdir()
    new.write_text("import os\nimport socket\nfrom ...transport import udp\n")
    bad, stale = layering_report(tmp_path, {})
    assert bad == [
        "sipserver/proxy/extra/new.py:2: imports socket (socket: IO library)",
        "sipserver/proxy/extra/new.py:3: imports sipserver.transport"
        " (sipserver.transport: IO side of sipserver)",
    ]
    allowed = {
        ("sipserver/proxy/extra/new.py", "socket"): "test",
        ("sipserver/proxy/gone.py", "trio"): "test",
    }
    bad, stale = layering_report(tmp_path, allowed)
    assert len(bad) == 1 and "sipserver.transport" in bad[0]
    assert stale == [("sipserver/proxy/gone.py", "trio")]


def test_checker_flags_a_forbidden_module() -> None:
    """Control: the checker sees each kind of violation, with file:line and what it was."""
    source = "\n".join(
        [
            "import trio",  # 1
            "from time import monotonic as now",  # 2
            "import time as t, datetime",  # 3
            "from datetime import date",  # 4
            "from .. import transport",  # 5: relative, resolves to sipserver.transport
            "from ..config import Config",  # 6
            "def later():",  # 7
            "    import socket",  # 8: inside a function
            "    from sipserver.mgmt.metrics import Metrics",  # 9
            "    return t.time(), now(), datetime.datetime.utcnow()",  # 10
            "DEFAULT_CLOCK = t.perf_counter_ns",  # 11: a reference, not a call
            "TODAY = date.today()",  # 12
            "import importlib; importlib.import_module('asyncio')",  # 13
            "import math, sqlite3, os; from time import sleep",  # 14: all fine
            "from time import *",  # 15
            "STAMP = monotonic_ns()",  # 16
        ]
    )
    found = [str(v) for v in check_source(source, "synthetic.py", "sipserver.proxy.synthetic")]
    expected = [
        "synthetic.py:1: imports trio (trio: IO library)",
        "synthetic.py:2: reads the clock: time.monotonic",
        "synthetic.py:5: imports sipserver.transport (sipserver.transport: IO side of sipserver)",
        "synthetic.py:6: imports sipserver.config (sipserver.config: IO side of sipserver)",
        "synthetic.py:8: imports socket (socket: IO library)",
        "synthetic.py:9: imports sipserver.mgmt.metrics (sipserver.mgmt: IO side of sipserver)",
        "synthetic.py:10: reads the clock: datetime.datetime.utcnow",
        "synthetic.py:10: reads the clock: time.monotonic",
        "synthetic.py:10: reads the clock: time.time",
        "synthetic.py:11: reads the clock: time.perf_counter_ns",
        "synthetic.py:12: reads the clock: datetime.date.today",
        "synthetic.py:13: imports asyncio (asyncio: IO library)",
        "synthetic.py:16: reads the clock: time.monotonic_ns",
    ]
    assert found == expected


def test_checker_resolves_relative_imports_from_a_package_init() -> None:
    found = check_source("from .transport import x\n", "__init__.py", "sipserver", is_package=True)
    assert [str(v) for v in found] == [
        "__init__.py:1: imports sipserver.transport (sipserver.transport: IO side of sipserver)"
    ]
    assert check_source("from .transport import x\n", "m.py", "sipserver.sip.m") == []


# --------------------------------------------------------------------------- the dynamic probe

PROBE = """
import importlib, json, sys
report = {"loaded": [], "trio_after": None}
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
    report["loaded"].append(name)
    if report["trio_after"] is None and "trio" in sys.modules:
        report["trio_after"] = name
report["trio"] = "trio" in sys.modules
print(json.dumps(report))
"""


def probe(modules: list[str]) -> dict[str, object]:
    """Import ``modules`` in order in a fresh interpreter; report whether trio came along."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(modules)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_probe_notices_trio() -> None:
    """Control: the probe does see trio when something imports it."""
    report = probe(["sipserver.sip", "trio"])
    assert report["trio"] is True and report["trio_after"] == "trio"


def test_importing_every_sans_io_module_leaves_trio_out() -> None:
    modules = [module_name(path) for path in sans_io_files()]
    report = probe(modules)
    assert report["loaded"] == modules
    assert report["trio"] is False, f"trio was imported by {report['trio_after']}"
