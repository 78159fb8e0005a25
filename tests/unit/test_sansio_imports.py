"""DESIGN.md rule 1: the sans-IO packages never import trio (issue "SIP message core").

Run in a fresh interpreter so modules imported by other tests cannot hide an import. Packages
that do not exist yet are skipped by name; ``sipserver.sip`` must exist.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SANS_IO = [
    "sipserver.sip",
    "sipserver.transaction",
    "sipserver.outbound.flowtoken",
    "sipserver.outbound.stun",
    "sipserver.registrar",
    "sipserver.auth.digest",
]

PROBE = """
import importlib, importlib.util, json, sys
report = {"missing": [], "loaded": [], "trio_after": None}
for name in json.loads(sys.argv[1]):
    try:
        found = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        report["missing"].append(name)
        continue
    importlib.import_module(name)
    report["loaded"].append(name)
    if report["trio_after"] is None and "trio" in sys.modules:
        report["trio_after"] = name
report["trio"] = "trio" in sys.modules
print(json.dumps(report))
"""


def probe(modules: list[str]) -> dict[str, object]:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(modules)],
        cwd=root,
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
    report = probe(["sipserver.sip", "trio", "sipserver.no_such_package"])
    assert report["trio"] is True and report["trio_after"] == "trio"
    assert report["missing"] == ["sipserver.no_such_package"]


def test_sans_io_packages_do_not_import_trio() -> None:
    report = probe(SANS_IO)
    assert isinstance(report["loaded"], list) and isinstance(report["missing"], list)
    assert "sipserver.sip" in report["loaded"], report
    assert report["trio"] is False, f"trio was imported by {report['trio_after']}"
    assert set(report["loaded"]) | set(report["missing"]) == set(SANS_IO)
