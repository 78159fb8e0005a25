"""tests/nat: the server and its phones on real (namespace) networks with a real NAT.

Each scenario waits through NAT timeouts (tens of seconds), so the scenarios of a module run at
once: the module-scoped ``nat_scenarios`` fixture starts, in its own thread, the scenario of
every selected test marked ``nat_scenario(NAME)`` (the module's ``scenario_NAME(tmp)``), and
each test waits for its own one and re-raises what it raised. Deselected tests' scenarios never
start.

Under CI=true a host that cannot build namespaces fails every test with the reason; elsewhere
they are skipped (not root, no iptables)."""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from natlab import LabUnavailable, check_lab_support, in_ci  # noqa: E402

SCENARIO_TIMEOUT = 150.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "nat_scenario(name): runs scenario_NAME of the module concurrently "
                                       "with the module's other scenarios (tests/nat/conftest.py)")


class Scenarios:
    def __init__(self) -> None:
        self.threads: dict[str, threading.Thread] = {}
        self.errors: dict[str, BaseException] = {}
        self.durations: dict[str, float] = {}

    def start(self, name: str, fn: Callable[[Path], None], tmp: Path) -> None:
        def body() -> None:
            t0 = time.monotonic()
            try:
                fn(tmp)
            except BaseException as exc:  # handed to the test in the main thread
                self.errors[name] = exc
            finally:
                self.durations[name] = time.monotonic() - t0

        t = threading.Thread(target=body, name=f"scenario-{name}", daemon=True)
        self.threads[name] = t
        t.start()

    def check(self, request: pytest.FixtureRequest) -> None:
        marker = request.node.get_closest_marker("nat_scenario")
        assert marker is not None, f"{request.node.name} has no nat_scenario marker"
        name = marker.args[0]
        thread = self.threads[name]
        thread.join(SCENARIO_TIMEOUT)
        if thread.is_alive():
            pytest.fail(f"scenario {name} still running after {SCENARIO_TIMEOUT:g} s")
        exc = self.errors.get(name)
        if exc is not None:
            if isinstance(exc, (AssertionError, pytest.fail.Exception, pytest.skip.Exception)):
                raise exc
            raise AssertionError(f"scenario {name} raised:\n" + "".join(traceback.format_exception(exc))) from exc

    def join_all(self) -> None:
        for t in self.threads.values():
            t.join(SCENARIO_TIMEOUT)


@pytest.fixture(scope="module")
def nat_scenarios(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenarios]:
    try:
        check_lab_support()
    except LabUnavailable as exc:
        if in_ci():
            pytest.fail(f"NAT tests cannot run under CI: {exc}")
        pytest.skip(str(exc))
    module = request.module
    runner = Scenarios()
    for item in request.session.items:
        marker = item.get_closest_marker("nat_scenario")
        if marker is None or getattr(item, "module", None) is not module:
            continue
        name = marker.args[0]
        if name in runner.threads:
            continue
        fn: Any = getattr(module, f"scenario_{name}")
        runner.start(name, fn, tmp_path_factory.mktemp(name))
    yield runner
    runner.join_all()
