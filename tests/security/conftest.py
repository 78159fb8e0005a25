"""tests/security: the server attacked on the wire (issue 16).

The in-process harness lives in tests/integration (imported there as the top-level module
``harness``, pytest putting each test file's folder on sys.path); these tests use it too."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for _folder in (_HERE.parent / "integration", _HERE):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from attacker import OWN_HOST, VICTIM_HOST, Victim  # noqa: E402  (found through the path above)


@pytest.fixture
def victim() -> Iterator[Victim]:
    """Somebody else (127.0.0.3: neither served nor a relay domain): must hear nothing."""
    v = Victim(VICTIM_HOST)
    yield v
    v.close()


@pytest.fixture
def own_victim() -> Iterator[Victim]:
    """A service on the server's own address (127.0.0.1, other ports): must hear nothing."""
    v = Victim(OWN_HOST)
    yield v
    v.close()
