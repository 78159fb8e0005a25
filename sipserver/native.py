"""The optional mypyc build of the sans-IO hot modules, and the switch that loads it.

``scripts/build-native`` compiles the modules named in ``MODULES`` with mypyc into
``.native/`` next to the package (outside the source tree, so a stale build never shadows an
edited ``.py``) and writes a manifest with the SHA-256 of every source it compiled. At import of
``sipserver`` (``install``) an import hook loads the compiled modules only when the manifest
matches this interpreter and every listed source is unchanged; otherwise the pure-Python code
runs, which is always complete and is what CI tests. ``SIPSERVER_PURE=1`` forces pure Python.
``status()`` says which one runs and why: ``sipserver --version`` prints it, ``sipserver run``
logs it at start and ``sipserver ctl info`` shows it.

No trio, no sockets: this runs before anything else of the package is imported.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# The modules compiled by scripts/build-native: the message model and parser, the registrar's
# REGISTER procedure and location store, the proxy procedure and its route processing, the
# transaction machines, and the sans-IO helpers mypyc compiles unchanged. Flow tokens use
# ``attrs.field`` definitions mypyc cannot compile today (docs/performance.md, "mypyc").
# transaction/timers.py compiles but is left out: compiled code checks declared types, so a
# string for a timer would raise TypeError, not the TransactionError its check gives; it runs
# once per start, nothing is gained.
MODULES: tuple[str, ...] = (
    "sipserver.sip.errors",
    "sipserver.sip.limits",
    "sipserver.sip.randomness",
    "sipserver.sip.uri",
    "sipserver.sip.headers",
    "sipserver.sip.message",
    "sipserver.sip.parser",
    "sipserver.sip.build",
    "sipserver.sip.framer",
    "sipserver.transaction.errors",
    "sipserver.transaction.events",
    "sipserver.transaction.table",
    "sipserver.transaction.machine",
    "sipserver.transaction.server",
    "sipserver.transaction.client",
    "sipserver.registrar.binding",
    "sipserver.registrar.gruu",
    "sipserver.registrar.store",
    "sipserver.registrar.registrar",
    "sipserver.proxy.selection",
    "sipserver.proxy.targets",
    "sipserver.proxy.routing",
    "sipserver.proxy.procedure",
)
# mypyc puts the code of all modules in one shared library (``sipserver._native__mypyc``);
# each module's own extension is a stub that imports it.
GROUP = "sipserver._native"
MANIFEST = "manifest.json"

PACKAGE_DIR = Path(__file__).resolve().parent


def native_dir() -> Path:
    """Where the build lives: ``$SIPSERVER_NATIVE_DIR`` or ``.native/`` beside the package."""
    env = os.environ.get("SIPSERVER_NATIVE_DIR")
    return Path(env) if env else PACKAGE_DIR.parent / ".native"


def source_path(module: str) -> Path:
    return PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")


def source_digest(module: str) -> str:
    return hashlib.sha256(source_path(module).read_bytes()).hexdigest()


def build_tag() -> str:
    """The interpreter a build is for (the extension suffix names version, ABI and platform)."""
    return importlib.machinery.EXTENSION_SUFFIXES[0]


class _Finder:
    """Resolves the compiled modules (and mypyc's shared group library) to their .so files;
    every other import falls through to the normal finders."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        return importlib.util.spec_from_file_location(fullname, file)


_status = "pure Python (sipserver.native.install not run)"
_compiled: tuple[str, ...] = ()


def _check(directory: Path) -> tuple[dict[str, Path] | None, str]:
    """(module -> .so file, "") when the build at ``directory`` may be loaded, else (None, why)."""
    manifest_file = directory / MANIFEST
    if not manifest_file.exists():
        return None, f"no compiled build in {directory} (scripts/build-native makes one)"
    try:
        manifest = json.loads(manifest_file.read_text())
        tag = manifest["tag"]
        digests: dict[str, str] = manifest["modules"]
        built: dict[str, str] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable {manifest_file}: {exc}"
    if tag != build_tag():
        return None, f"the build in {directory} is for {tag}, this interpreter loads {build_tag()}"
    for module, digest in digests.items():
        try:
            current = source_digest(module)
        except OSError:
            return None, f"{module} has no source any more; rebuild with scripts/build-native"
        if current != digest:
            return None, f"{source_path(module).relative_to(PACKAGE_DIR.parent)} changed since the build; rebuild with scripts/build-native"
    files = {module: directory / relative for module, relative in built.items()}
    missing = [str(f) for f in files.values() if not f.exists()]
    missing += [f"{m} (not in the build)" for m in digests if m not in files]
    if missing:
        return None, f"the build in {directory} lacks {missing[0]}; rebuild with scripts/build-native"
    return files, ""


def install() -> None:
    """Put the compiled build in front of the pure modules when it is sound (see module doc).
    Called once, from ``sipserver/__init__.py``, before any listed module is imported."""
    global _status, _compiled
    if os.environ.get("SIPSERVER_PURE", "") not in ("", "0"):
        _status = "pure Python (SIPSERVER_PURE is set)"
        return
    loaded = [m for m in MODULES if m in sys.modules]
    if loaded:
        _status = f"pure Python ({loaded[0]} was imported before sipserver.native.install)"
        return
    files, why = _check(native_dir())
    if files is None:
        _status = f"pure Python: {why}"
        return
    sys.meta_path.insert(0, _Finder(files))
    _compiled = tuple(sorted(m for m in files if not m.endswith("__mypyc")))
    _status = f"compiled with mypyc: {len(_compiled)} modules from {native_dir()}"


def status() -> str:
    """One line for the start-up log: which code runs and, for pure Python, why."""
    return _status


def compiled_modules() -> tuple[str, ...]:
    """The modules the import hook serves from the build (empty when pure Python runs)."""
    return _compiled


def is_compiled(module: ModuleType) -> bool:
    """True when ``module`` was loaded from an extension module (what the tests check)."""
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)

