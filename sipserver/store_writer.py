"""The location store written by a child process: the SQLite file, or Redis (``store.backend =
"redis"``, ``sipserver.redis_store``: same protocol, ``--redis`` on the child's command line and
the connection settings in its environment, so a password in the URL never shows in ``ps``).

Why a process and not a thread: CPython's ``sqlite3`` lets go of the GIL around every statement
step and takes it back afterwards. With the event loop busy, each take-back waited up to the GIL
switch interval (5 ms), so a batch of a few rows took tens of milliseconds, the 200 OKs waiting
for it were late, UDP phones retransmitted and the server collapsed at ~1,700 REGISTERs/s while
the same server without SQLite kept 3,000/s (docs/performance.md). A child process has a GIL of
its own; the event loop only pickles the rows of a batch onto a pipe.

Protocol on the child's stdin/stdout: frames of a 4-byte big-endian length and a payload. The
parent sends ``pickle((puts, deletes))`` (rows made by ``batch_rows``); the child answers each
with an empty payload once the batch is committed, or with the error text. The first frame the
child sends, before any batch, says whether the database opened (empty) or why not.

The child ignores SIGINT and SIGTERM (a terminal's Ctrl-C or systemd's stop reach the whole
process group) and exits when its stdin closes: the parent closes it after the last batch on
shutdown, and the kernel closes it when the parent dies.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import BinaryIO, Protocol

import trio

from .registrar.sqlite_store import DeleteRow, PersistenceError, PutRow, SqlitePersistence

__all__ = ["StoreWriterProcess"]

log = logging.getLogger("sipserver.store")

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LEN = 4
_MAX_FRAME = 1 << 30


class StoreWriterProcess:
    """Parent side: one child process that owns the write connection to the SQLite file."""

    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._proc: trio.Process | None = None
        self._buf = bytearray()
        self._lock = trio.Lock()

    async def start(self) -> None:
        """Start the child and wait until it has opened the database (PersistenceError if it
        could not)."""
        self._buf = bytearray()
        # The child imports this package from where the parent found it, whatever its cwd.
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        env.update(self._child_env())
        self._proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "sipserver.store_writer", *self._child_args()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            error = await self._receive()
        except PersistenceError:
            await self._reap()
            raise
        if error:
            await self._reap()
            raise PersistenceError(error)

    def _child_args(self) -> list[str]:
        """The child's command-line arguments (after ``-m sipserver.store_writer``)."""
        return [self.path, self.synchronous]

    def _child_env(self) -> dict[str, str]:
        """Extra environment variables for the child."""
        return {}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def write_rows(self, puts: Sequence[PutRow], deletes: Sequence[DeleteRow]) -> None:
        """Commit one batch. A child that died is started again once and the batch is sent
        again (writing the same rows twice is harmless); PersistenceError when that fails too
        or the database refuses the batch."""
        if not puts and not deletes:
            return
        payload = pickle.dumps((list(puts), list(deletes)), protocol=pickle.HIGHEST_PROTOCOL)
        async with self._lock:
            for attempt in (1, 2):
                try:
                    if self._proc is None:
                        await self.start()
                    await self._send(payload)
                    error = await self._receive()
                except (PersistenceError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    code = self._proc.returncode if self._proc is not None else None
                    await self._reap()
                    if attempt == 2:
                        raise PersistenceError(f"location store writer failed: {exc}") from None
                    log.error(
                        "location store writer process stopped (exit status %s: %s); starting it again",
                        code,
                        exc,
                    )
                    continue
                if error:
                    raise PersistenceError(error)
                return

    async def aclose(self) -> None:
        """Let the child finish and exit (closing its stdin); kill it after 10 s."""
        async with self._lock:
            await self._reap(graceful=True)

    # ------------------------------------------------------------------ framing
    async def _send(self, payload: bytes) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        await proc.stdin.send_all(len(payload).to_bytes(_LEN, "big") + payload)

    async def _receive(self) -> str:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        n = int.from_bytes(await self._exactly(_LEN), "big")
        return (await self._exactly(n)).decode("utf-8", "replace") if n else ""

    async def _exactly(self, n: int) -> bytes:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        buf = self._buf
        while len(buf) < n:
            chunk = await proc.stdout.receive_some(65536)
            if not chunk:
                raise PersistenceError("location store writer process exited")
            buf += chunk
        out = bytes(buf[:n])
        del buf[:n]
        return out

    async def _reap(self, graceful: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with trio.CancelScope(shield=True):
            if proc.stdin is not None:
                try:
                    await proc.stdin.aclose()
                except (trio.BrokenResourceError, OSError):
                    pass
            with trio.move_on_after(10 if graceful else 1):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if proc.stdout is not None:
                await proc.stdout.aclose()


# ---------------------------------------------------------------------------- child


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    """``n`` bytes from ``stream``, None at end of input (the parent closed the pipe)."""
    data = b""
    read = stream.read
    while len(data) < n:
        chunk = read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class _RowWriter(Protocol):
    def write_rows(self, puts: Sequence[PutRow], deletes: Sequence[DeleteRow]) -> None: ...

    def close(self) -> None: ...


def _child(path: str, synchronous: str) -> int:
    return _serve_child(lambda: SqlitePersistence(path, synchronous=synchronous))  # type: ignore[arg-type]


def _serve_child(open_store: Callable[[], _RowWriter]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer

    def reply(text: str) -> None:
        data = text.encode("utf-8")
        stdout.write(len(data).to_bytes(_LEN, "big") + data)
        stdout.flush()

    try:
        store = open_store()
    except PersistenceError as err:
        reply(str(err) or "cannot open the location database")
        return 1
    reply("")
    try:
        while True:
            header = _read_exactly(stdin, _LEN)
            if header is None:
                break
            n = int.from_bytes(header, "big")
            if n > _MAX_FRAME:
                reply(f"batch frame of {n} bytes is too large")
                break
            payload = _read_exactly(stdin, n)
            if payload is None:
                break
            try:
                puts, deletes = pickle.loads(payload)
                store.write_rows(puts, deletes)
            except PersistenceError as err:
                reply(str(err) or "write failed")
            except Exception as err:  # a bad frame must not end the writer silently
                reply(f"cannot write the batch: {type(err).__name__}: {err}")
            else:
                reply("")
    except BrokenPipeError:
        pass
    finally:
        try:
            store.close()
        except PersistenceError as err:
            print(f"sipserver store writer: {err}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--redis"]:
        from .redis_store import child_store  # the redis client is imported by this child only

        sys.exit(_serve_child(child_store))
    if len(sys.argv) != 3:
        print("usage: python -m sipserver.store_writer DATABASE FULL|NORMAL", file=sys.stderr)
        sys.exit(2)
    sys.exit(_child(sys.argv[1], sys.argv[2]))
