"""Cryptographically random identifiers, cheaply.

RFC 3261 §19.3 wants tags and branch identifiers globally unique and cryptographically random.
``os.urandom`` gives that, but a system call per tag costs tens of microseconds on some virtual
machines; here one call fills a pool that serves a few hundred identifiers.
Invariant: every byte handed out comes from ``os.urandom`` and is handed out once.
"""

from __future__ import annotations

import os

_POOL_SIZE = 4096
_pool = b""
_pos = 0


def random_bytes(n: int) -> bytes:
    global _pool, _pos
    if _pos + n > len(_pool):
        _pool = os.urandom(max(_POOL_SIZE, n))
        _pos = 0
    out = _pool[_pos : _pos + n]
    _pos += n
    return out


def random_hex(nbytes: int) -> str:
    return random_bytes(nbytes).hex()
