"""DESIGN.md layering for sipserver/media: every module but ``client.py`` is sans-IO.

The same static checker and fresh-interpreter probe as tests/unit/test_sansio_imports.py (which
covers the older sans-IO packages), applied to media's sans-IO modules: no trio, socket or
thread library, nothing from the IO side of sipserver (``sipserver.media.client`` included), no
clock read; importing them all (and the package) leaves trio out of ``sys.modules``."""

from __future__ import annotations

from pathlib import Path

from test_sansio_imports import ROOT, check_source, module_name, probe

MEDIA = ROOT / "sipserver" / "media"
IO_MODULES = {"client.py"}  # the trio side: sockets, tasks, the clock


def sans_io_media_files() -> list[Path]:
    return sorted(p for p in MEDIA.glob("*.py") if p.name not in IO_MODULES)


def test_media_sans_io_modules_keep_to_their_layer() -> None:
    files = sans_io_media_files()
    assert {p.name for p in files} >= {"__init__.py", "bencode.py", "ng.py", "planner.py", "sdp.py", "session.py"}
    bad: list[str] = []
    for path in files:
        source = path.read_text(encoding="utf-8")
        name = module_name(path)
        violations = check_source(source, path.relative_to(ROOT).as_posix(), name, is_package=path.name == "__init__.py")
        bad += [str(v) for v in violations]
        if "sipserver.media.client" in source or "from .client" in source or "from . import client" in source:
            bad.append(f"{path.name}: reaches the trio client")
    assert not bad, "media sans-IO layering violated (DESIGN.md):\n" + "\n".join(bad)


def test_the_checker_sees_the_trio_client() -> None:
    """Control: client.py itself would fail the check (it is the IO side on purpose)."""
    path = MEDIA / "client.py"
    violations = check_source(path.read_text(encoding="utf-8"), "client.py", "sipserver.media.client")
    assert any(v.rule == "trio" for v in violations)


def test_importing_media_leaves_trio_out() -> None:
    modules = [module_name(p) for p in sans_io_media_files()]
    report = probe(modules)
    assert report["loaded"] == modules
    assert report["trio"] is False, f"trio was imported by {report['trio_after']}"
