"""Issue 20: a node recognises its own change notifications from their first bytes (it skips
them in the listener thread), and only its own: the prefix must match what the store writer
publishes, for any node name."""

from __future__ import annotations

import json

import pytest

from sipserver.cluster import own_prefix
from sipserver.redis_store import change_message


@pytest.mark.parametrize("node", ["a", "w1", "node-b", 'quo"te', "nœud", "a,b"])
def test_own_batches_and_only_those_are_recognised(node: str) -> None:
    own = change_message(node, [("k1", "r1")], ["k2"]).encode()
    assert own.startswith(own_prefix(node))
    assert json.loads(own)["node"] == node
    for other in ("", "w", node + "x", "x" + node, node.upper() if node.upper() != node else "Z"):
        assert not change_message(other, [], ["k"]).encode().startswith(own_prefix(node))
