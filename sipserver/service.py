"""`sipserver run`: one server process, until SIGINT/SIGTERM (SIGHUP re-reads the credentials).

The shutdown flushes the location store under a shielded scope, so a cancelled run still saves
every binding it acknowledged."""

from __future__ import annotations

import logging
import signal
from typing import Any

import trio

from .config import Config
from .runtime import Server

log = logging.getLogger("sipserver")


async def serve_config(cfg: Config, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run a server until cancelled (tests start it with ``nursery.start``)."""
    await _serve(Server(cfg), task_status=task_status)


def run(cfg: Config) -> int:
    """`sipserver run`: serve until SIGINT/SIGTERM, then shut down cleanly and return 0.
    SIGHUP re-reads the credentials without a restart."""

    async def main() -> None:
        server = Server(cfg)
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                nursery.start_soon(_serve, server)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        server.reload_credentials()
                        continue
                    log.info("received %s, shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except Exception:
        log.exception("server failed")
        return 1
    log.info("stopped")
    return 0


async def _serve(server: Server, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run until cancelled, then flush the store (shielded, so a cancelled run still saves)."""
    try:
        await server.run(task_status=task_status)
    finally:
        with trio.CancelScope(shield=True):
            await server.shutdown()


__all__ = ["run", "serve_config"]
