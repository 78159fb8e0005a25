"""Serves the web phone example to a test browser: examples/webphone/ at /, and the interop
tests' SIP.js copy at /sip.js/lib/ (the example README's step 1). Shared by the management
test (tests/integration/test_mgmt.py) and the media interop test (tests/interop)."""

from __future__ import annotations

from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[2]
WEBPHONE = ROOT / "examples" / "webphone"
SIPJS_LIB = ROOT / "tests" / "interop" / "js" / "node_modules" / "sip.js" / "lib"


class WebphoneFiles(SimpleHTTPRequestHandler):
    def translate_path(self, path: str) -> str:
        rel = unquote(urlsplit(path).path).lstrip("/")
        if rel.startswith("sip.js/lib/"):
            return str(SIPJS_LIB / rel[len("sip.js/lib/") :])
        return str(WEBPHONE / (rel or "index.html"))

    def log_message(self, format: str, *args: Any) -> None:
        pass
