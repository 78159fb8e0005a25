"""tests/cluster: three sipserver nodes as processes on one real redis-server (issue 20).

The raw-socket UAs (tests/integration/harness.py) and the redis-server fixture
(tests/integration/redis_fixture.py) are imported as top-level modules from tests/integration,
as tests/security does. Without redis-server the tests skip, except under CI=true, where they
fail (``require_redis_server``).

A failed test gets each node's log tail (and Redis's) in its report."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for _folder in (_HERE.parent / "integration", _HERE):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from nodes import Cluster, tail  # noqa: E402  (found through the path above)
from redis_fixture import RedisServer, require_redis_server  # noqa: E402


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server per test module (AOF, appendfsync always); each test uses its own key
    prefix. A test that stops it leaves it running again."""
    directory = tmp_path_factory.mktemp("redis")
    server = RedisServer(require_redis_server(), directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    """Nodes a, b and c of a fresh cluster (own key prefix), for one test; killed afterwards."""
    if redis_server.process is None:
        redis_server.start()
    c = Cluster(redis_server, tmp_path)
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def shared_cluster(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Nodes a, b and c shared by the tests of a module that leave the nodes and Redis alone."""
    c = Cluster(redis_server, tmp_path_factory.mktemp("cluster"))
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {}) or {}
    for value in funcargs.values():
        if isinstance(value, Cluster):
            for node in value.nodes.values():
                report.sections.append((f"node {node.node_id} log tail", node.log_tail(4000)))
            report.sections.append(("redis log tail", tail(value.redis.log_path, 1500)))
