"""Compile sipserver's hot sans-IO modules with mypyc into .native/ (see sipserver/native.py).

    scripts/build-native               build (or rebuild) for this interpreter
    scripts/build-native --if-needed   build only when there is no sound build and the tools are
                                       here (what scripts/serve runs; never fails for lack of them)
    scripts/build-native --clean       remove the build: pure Python runs

Needs mypy (its mypyc compiler; `pip install -e '.[native]'`), a C compiler and the Python
headers. The build is written to a temporary directory and moved into place only when every
module compiled, so a failed build leaves the previous one (or none) untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clean", action="store_true", help="remove the build and exit")
    ap.add_argument("--out", type=Path, help="build directory (default: $SIPSERVER_NATIVE_DIR or .native/)")
    ap.add_argument("--opt-level", default="3", help="mypyc/C optimisation level (default 3)")
    ap.add_argument("--if-needed", action="store_true",
                    help="do nothing when the build is sound or mypyc/a C compiler is missing")
    args = ap.parse_args(argv)

    os.environ["SIPSERVER_PURE"] = "1"  # the build imports nothing compiled
    sys.path.insert(0, str(ROOT))
    from sipserver import native

    out = (args.out or native.native_dir()).resolve()
    if args.clean:
        shutil.rmtree(out, ignore_errors=True)
        print(f"removed {out}; pure Python runs")
        return 0
    if args.if_needed:
        sound, why = native._check(out)
        if sound is not None:
            return 0
        missing = missing_tools()
        if missing:
            print(f"build-native: {missing}; pure Python runs", file=sys.stderr)
            return 0
        print(f"build-native: {why}; compiling the hot modules with mypyc (under a minute)", file=sys.stderr)
    try:
        from mypyc.build import mypycify
        from setuptools import setup
    except ImportError as exc:
        print(f"build-native: {exc.name} is not installed (pip install -e '.[native]')", file=sys.stderr)
        return 2

    started = time.monotonic()
    paths = [str(native.source_path(m).relative_to(ROOT)) for m in native.MODULES]
    digests = {m: native.source_digest(m) for m in native.MODULES}
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".native-build-", dir=out.parent))
    try:
        os.chdir(ROOT)
        ext = mypycify(
            paths,
            opt_level=args.opt_level,
            group_name=native.GROUP,
            target_dir=str(work / "c"),
        )
        setup(
            name="sipserver-native",
            ext_modules=ext,
            script_args=["-q", "build_ext", "--build-lib", str(work / "lib"), "--build-temp", str(work / "tmp")],
        )
        lib = work / "lib"
        suffix = native.build_tag()
        # Every extension the build made, by module name: the listed modules' stubs and mypyc's
        # shared library that holds their code (named after the group).
        files = {
            ".".join(f.relative_to(lib).parts)[: -len(suffix)]: str(f.relative_to(lib))
            for f in sorted(lib.rglob("*" + suffix))
        }
        unbuilt = [m for m in native.MODULES if m not in files]
        if unbuilt:
            print(f"build-native: no extension was made for {', '.join(unbuilt)}", file=sys.stderr)
            return 1
        (lib / native.MANIFEST).write_text(
            json.dumps({"tag": suffix, "modules": digests, "files": files, "built": time.time()}, indent=1) + "\n"
        )
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        (work / "lib").rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"compiled {len(paths)} modules into {out} in {time.monotonic() - started:.0f} s")
    return 0


def missing_tools() -> str | None:
    """Why this machine cannot build (no mypyc, no C compiler, no Python headers), else None."""
    import importlib.util
    import sysconfig

    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed (pip install -e '.[native]')"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc})"
    if not Path(sysconfig.get_paths()["include"], "Python.h").exists():
        return "no Python headers (Python.h)"
    return None


if __name__ == "__main__":
    raise SystemExit(main())
