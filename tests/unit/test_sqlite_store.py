"""Binding persistence: SQLite with WAL and group commit, and the memory backend (DESIGN.md
"Persist bindings with group commit"; OB-REG-16 for what survives a restart)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sipserver.outbound.flow import Flow, Transport
from sipserver.outbound.flowtoken import FlowTokenCodec
from sipserver.registrar import (
    Binding,
    BindingKey,
    Delete,
    LocationStore,
    MemoryPersistence,
    PersistenceError,
    Put,
    Registrar,
    RegistrarSettings,
    SqlitePersistence,
    survives_restart,
)
from sipserver.sip import Request, parse_message, parse_sip_uri

AOR = "alice@example.com"
IID = "urn:uuid:00000000-0000-1000-8000-aabbccddeeff"
NOW = 1_000_000.0


def binding(
    n: int, *, expires: float = 3600, token: str | None = None, transport: str = "udp"
) -> Binding:
    uri = f"sip:alice@192.0.2.{n % 250 + 1}:{5000 + n}"
    return Binding(
        key=BindingKey.for_contact(AOR, parse_sip_uri(uri)),
        aor=AOR,
        contact_uri=uri,
        expires_at=NOW + expires,
        call_id=f"call-{n}",
        cseq=n,
        contact_params=(("+sip.instance", f'"<{IID}>"'), ("q", "0.5")),
        instance=f'"<{IID}>"',
        instance_id=IID,
        q=0.5,
        path=("<sip:p1.example.net;lr>",),
        flow_token=token,
        transport=transport,
        source="192.0.2.1:5060",
        user_agent="Phone/1.0",
        registered_at=NOW,
        temp_gruus=("tA", "tB"),
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "location.sqlite"


def keep_all(_: Binding) -> bool:
    return True


def test_write_batch_and_load_round_trip(db: Path) -> None:
    p = SqlitePersistence(db)
    items = [binding(i) for i in range(5)]
    p.write_batch([Put(b) for b in items])
    p.close()
    p2 = SqlitePersistence(db)
    loaded = p2.load(NOW, keep_all)
    assert sorted(loaded, key=lambda b: b.cseq) == items
    p2.close()


def test_deletes_and_replacements_are_persisted(db: Path) -> None:
    p = SqlitePersistence(db)
    a, b = binding(1), binding(2)
    p.write_batch([Put(a), Put(b)])
    p.write_batch([Delete(a.key), Put(Binding.from_record({**b.to_record(), "cseq": 99}))])
    loaded = p.load(NOW, keep_all)
    assert [(x.key, x.cseq) for x in loaded] == [(b.key, 99)]


def test_last_change_per_key_wins_within_a_batch(db: Path) -> None:
    p = SqlitePersistence(db)
    a, b = binding(1), binding(2)
    p.write_batch([Put(a), Delete(a.key), Delete(b.key), Put(b)])
    assert [x.key for x in p.load(NOW, keep_all)] == [b.key]


def test_load_drops_expired_and_deletes_them_from_disk(db: Path) -> None:
    p = SqlitePersistence(db)
    p.write_batch([Put(binding(1, expires=10)), Put(binding(2, expires=1000))])
    assert [b.cseq for b in p.load(NOW + 10, keep_all)] == [2]
    rows = sqlite3.connect(db).execute("SELECT count(*) FROM bindings").fetchone()[0]
    assert rows == 1


def test_load_keep_filter_and_rejected_rows_are_removed(db: Path) -> None:
    p = SqlitePersistence(db)
    tcp = binding(1, token="TOKEN1", transport="tcp")
    udp = binding(2, token="TOKEN2", transport="udp")
    via_path = binding(3)
    p.write_batch([Put(tcp), Put(udp), Put(via_path)])
    loaded = p.load(NOW, survives_restart)
    assert sorted(b.cseq for b in loaded) == [2, 3]
    # The file mirrors what was loaded: a second load with keep-all finds the same two.
    assert sorted(b.cseq for b in p.load(NOW, keep_all)) == [2, 3]


def test_survives_restart_policy() -> None:
    assert not survives_restart(binding(1, token="T", transport="tcp"))
    assert not survives_restart(binding(1, token="T", transport="wss"))
    assert survives_restart(binding(1, token="T", transport="udp"))
    assert survives_restart(binding(1, token=None, transport="tcp"))


def test_wal_mode_is_on(db: Path) -> None:
    p = SqlitePersistence(db)
    assert p.journal_mode == "wal"
    mode = sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode.lower() == "wal"
    p.close()


def test_many_changes_commit_in_one_transaction(db: Path) -> None:
    p = SqlitePersistence(db)
    statements: list[str] = []
    p._conn.set_trace_callback(statements.append)  # type: ignore[union-attr]  # observe commits
    p.write_batch([Put(binding(i)) for i in range(1000)] + [Delete(binding(0).key)])
    p._conn.set_trace_callback(None)  # type: ignore[union-attr]
    commits = [s for s in statements if s.strip().upper() == "COMMIT"]
    begins = [s for s in statements if s.strip().upper().startswith("BEGIN")]
    assert len(commits) == 1 and len(begins) == 1
    assert len(p.load(NOW, keep_all)) == 999


def test_empty_batch_writes_nothing(db: Path) -> None:
    p = SqlitePersistence(db)
    statements: list[str] = []
    p._conn.set_trace_callback(statements.append)  # type: ignore[union-attr]
    p.write_batch([])
    assert statements == []


def test_unreadable_rows_are_skipped_counted_and_removed(db: Path) -> None:
    p = SqlitePersistence(db)
    good = binding(1)
    p.write_batch([Put(good)])
    other = binding(2)
    with sqlite3.connect(db) as raw:
        raw.execute(
            "INSERT INTO bindings (key, aor, expires_at, record) VALUES (?, ?, ?, ?)",
            ("garbage", AOR, NOW + 100, "{not json"),
        )
        # A valid record stored under the wrong key is unreadable too.
        raw.execute(
            "INSERT INTO bindings (key, aor, expires_at, record) VALUES (?, ?, ?, ?)",
            ("wrong-key", AOR, NOW + 100, '{"key": 1}'),
        )
    assert p.load(NOW, keep_all) == [good]
    assert p.unreadable == 2
    assert other not in p.load(NOW, keep_all) and p.unreadable == 0


def test_newer_schema_is_refused(db: Path) -> None:
    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(PersistenceError, match="newer"):
        SqlitePersistence(db)


def test_unopenable_path_is_persistence_error(tmp_path: Path) -> None:
    with pytest.raises(PersistenceError):
        SqlitePersistence(tmp_path / "missing-dir" / "x.sqlite")


def test_calls_after_close_raise_persistence_error(db: Path) -> None:
    p = SqlitePersistence(db)
    p.close()
    p.close()  # idempotent
    with pytest.raises(PersistenceError):
        p.write_batch([Put(binding(1))])
    with pytest.raises(PersistenceError):
        p.load(NOW, keep_all)


def test_synchronous_setting_is_validated(db: Path) -> None:
    SqlitePersistence(db, synchronous="NORMAL").close()
    with pytest.raises(PersistenceError):
        SqlitePersistence(db, synchronous="OFF")  # type: ignore[arg-type]


def test_memory_persistence_remembers_nothing() -> None:
    m = MemoryPersistence()
    m.write_batch([Put(binding(1))])
    assert m.load(NOW, keep_all) == []
    m.close()


def test_registrar_changes_survive_a_restart(db: Path) -> None:
    """End to end: REGISTERs handled, their changes written as one batch, the process
    "restarts", and a new store answers the same lookup (UDP) and forgets the TCP flow."""
    codec = FlowTokenCodec(bytes(range(32)))
    store = LocationStore()
    registrar = Registrar(
        RegistrarSettings(), store, codec, is_local_domain=lambda h: h == "example.com"
    )
    local = parse_sip_uri("sip:203.0.113.5:5060")

    def req(contact: str, transport: str, call_id: str) -> Request:
        text = (
            "REGISTER sip:example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} 192.0.2.10;branch=z9hG4bK{call_id}\r\n"
            "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 REGISTER\r\nSupported: outbound\r\n"
            f"Contact: {contact}\r\nContent-Length: 0\r\n\r\n"
        )
        msg = parse_message(text.encode())
        assert isinstance(msg, Request)
        return msg

    udp = Flow(Transport.UDP, ("203.0.113.5", 5060), ("192.0.2.10", 5060))
    tcp = Flow(Transport.TCP, ("203.0.113.5", 5060), ("192.0.2.10", 40000), 5)
    batch = []
    for r, flow in (
        (req(f'<sip:a@192.0.2.10>;reg-id=1;+sip.instance="<{IID}>"', "UDP", "u"), udp),
        (
            req(f'<sip:a@192.0.2.10;transport=tcp>;reg-id=2;+sip.instance="<{IID}>"', "TCP", "t"),
            tcp,
        ),
    ):
        result = registrar.handle(r, flow, now=NOW, local_uri=local)
        assert result.response.status == 200
        batch.extend(result.changes)
    p = SqlitePersistence(db)
    p.write_batch(batch)
    p.close()

    p2 = SqlitePersistence(db)
    restarted = LocationStore()
    restarted.apply([Put(b) for b in p2.load(NOW + 5, survives_restart)])
    (b,) = restarted.lookup(AOR, NOW + 5)
    assert b.reg_id == 1 and b.flow_token is not None and codec.decode(b.flow_token) == udp
    assert b == store.get(b.key)
