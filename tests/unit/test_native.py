"""sipserver/native.py: when the optional mypyc build is loaded and when pure Python runs (issue 19).

The rule under test: a compiled build is used only when its manifest matches this interpreter and
every source it was compiled from is unchanged; anything else runs the pure-Python code and says
why. The build itself is exercised in tests/integration/test_native_build.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sipserver import native


def _fake_build(directory: Path, *, tag: str | None = None, digests: dict[str, str] | None = None,
                files: dict[str, str] | None = None, touch: bool = True) -> None:
    """A build directory as scripts/build-native leaves it, with empty files for extensions."""
    tag = tag or native.build_tag()
    modules = ["sipserver.sip.errors", "sipserver.sip.limits"]
    if digests is None:
        digests = {m: native.source_digest(m) for m in modules}
    if files is None:
        files = {m: m.replace(".", "/") + native.build_tag() for m in [*modules, "sipserver._native__mypyc"]}
    for rel in files.values():
        if touch:
            (directory / rel).parent.mkdir(parents=True, exist_ok=True)
            (directory / rel).write_bytes(b"")
    (directory / native.MANIFEST).write_text(json.dumps({"tag": tag, "modules": digests, "files": files}))


def test_a_sound_build_maps_every_module_to_its_extension(tmp_path: Path) -> None:
    _fake_build(tmp_path)
    files, why = native._check(tmp_path)
    assert why == ""
    assert files is not None
    assert files["sipserver.sip.errors"] == tmp_path / ("sipserver/sip/errors" + native.build_tag())
    assert "sipserver._native__mypyc" in files  # mypyc's shared library is served too


def test_no_build_runs_pure_python_and_says_how_to_make_one(tmp_path: Path) -> None:
    files, why = native._check(tmp_path / "nothing")
    assert files is None
    assert "no compiled build" in why and "scripts/build-native" in why


def test_a_source_edited_after_the_build_turns_the_build_off(tmp_path: Path) -> None:
    """A stale extension must never shadow an edited .py: the edit would silently not run."""
    digests = {"sipserver.sip.errors": native.source_digest("sipserver.sip.errors"),
               "sipserver.sip.limits": "0" * 64}
    _fake_build(tmp_path, digests=digests)
    files, why = native._check(tmp_path)
    assert files is None
    assert "sipserver/sip/limits.py changed since the build" in why


def test_a_build_for_another_interpreter_is_not_loaded(tmp_path: Path) -> None:
    _fake_build(tmp_path, tag=".cpython-39-x86_64-linux-gnu.so")
    files, why = native._check(tmp_path)
    assert files is None
    assert "cpython-39" in why and native.build_tag() in why


def test_a_missing_extension_file_turns_the_build_off(tmp_path: Path) -> None:
    _fake_build(tmp_path, touch=False)
    files, why = native._check(tmp_path)
    assert files is None
    assert "lacks" in why


def test_a_module_without_an_extension_turns_the_build_off(tmp_path: Path) -> None:
    _fake_build(tmp_path, files={"sipserver.sip.errors": "sipserver/sip/errors" + native.build_tag()})
    files, why = native._check(tmp_path)
    assert files is None
    assert "sipserver.sip.limits (not in the build)" in why


def test_a_garbled_manifest_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / native.MANIFEST).write_text("{not json")
    files, why = native._check(tmp_path)
    assert files is None
    assert "unreadable" in why


def _status_in_child(env: dict[str, str]) -> list[str]:
    code = ("import sipserver.native as n, sipserver.sip.message as m; "
            "print(n.status()); print(n.is_compiled(m))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True, timeout=60)
    return out.stdout.strip().splitlines()


def test_sipserver_pure_forces_pure_python() -> None:
    status, compiled = _status_in_child({"SIPSERVER_PURE": "1"})
    assert status == "pure Python (SIPSERVER_PURE is set)"
    assert compiled == "False"


def test_a_stale_build_directory_leaves_the_server_on_pure_python(tmp_path: Path) -> None:
    digests = {"sipserver.sip.message": "f" * 64}
    _fake_build(tmp_path, digests=digests,
                files={"sipserver.sip.message": "sipserver/sip/message" + native.build_tag()})
    status, compiled = _status_in_child({"SIPSERVER_NATIVE_DIR": str(tmp_path), "SIPSERVER_PURE": ""})
    assert status.startswith("pure Python: sipserver/sip/message.py changed since the build")
    assert compiled == "False"


def test_this_process_reports_what_it_runs() -> None:
    import sipserver.sip.parser as parser

    assert native.status().startswith(("compiled with mypyc: ", "pure Python"))
    assert bool(native.compiled_modules()) == native.status().startswith("compiled")
    assert native.is_compiled(parser) == ("sipserver.sip.parser" in native.compiled_modules())
