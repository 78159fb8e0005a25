"""Tables with a size cap, for state that a remote party can make the server create at will
(per-source rate buckets, failure counts, nonce-count records): the memory they take stays
bounded whatever arrives. Sans-IO.

One policy for all of them: least recently used first. An entry is "used" when it is put or
touched; ``put`` returns what it pushed out, so an owner that must remember something about
evicted entries (the digest nonce horizon) can.
"""

from __future__ import annotations

import collections
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LruTable(collections.OrderedDict[K, V]):
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a bounded table needs room for at least one entry")
        super().__init__()
        self.limit = limit

    def put(self, key: K, value: V) -> list[tuple[K, V]]:
        """Store ``value`` as the most recently used entry; returns the entries evicted."""
        self[key] = value
        self.move_to_end(key)
        evicted: list[tuple[K, V]] = []
        while len(self) > self.limit:
            evicted.append(self.popitem(last=False))
        return evicted

    def touch(self, key: K) -> None:
        """Mark ``key`` (present) as the most recently used."""
        self.move_to_end(key)

    def oldest(self) -> tuple[K, V] | None:
        for item in self.items():
            return item
        return None
