"""LocationStore: lookups, batches, expiry on time, flow death, GRUU index (OB-REG-16, OB-CS-09,
GRUU-03/05, REG3261-09), plus the Binding/BindingKey value rules (OB-REG-06/07)."""

from __future__ import annotations

import random

import attrs
import pytest

from sipserver.registrar import (
    Binding,
    BindingKey,
    Delete,
    LocationStore,
    Put,
    RemovalCause,
    canonical_contact,
)
from sipserver.sip import parse_sip_uri

AOR = "alice@example.com"
IID = "urn:uuid:00000000-0000-1000-8000-aabbccddeeff"
NOW = 1_000_000.0


def plain(
    uri: str,
    *,
    aor: str = AOR,
    expires: float = 3600,
    q: float = 1.0,
    at: float = NOW,
    **kw: object,
) -> Binding:
    return Binding(
        key=BindingKey.for_contact(aor, parse_sip_uri(uri)),
        aor=aor,
        contact_uri=uri,
        expires_at=at + expires,
        call_id="c-" + uri,
        cseq=1,
        q=q,
        registered_at=at,
        **kw,  # type: ignore[arg-type]
    )


def outbound(
    reg_id: int,
    token: str | None,
    *,
    aor: str = AOR,
    iid: str = IID,
    expires: float = 3600,
    temps: tuple[str, ...] = (),
    call_id: str = "c",
) -> Binding:
    return Binding(
        key=BindingKey.for_instance(aor, iid, reg_id),
        aor=aor,
        contact_uri=f"sip:alice@192.0.2.10:{40000 + reg_id};transport=tcp",
        expires_at=NOW + expires,
        call_id=call_id,
        cseq=1,
        instance=f'"<{iid}>"',
        instance_id=iid,
        reg_id=reg_id,
        outbound=True,
        flow_token=token,
        path=(f"<sip:{token}@203.0.113.5;lr;ob>",) if token else (),
        registered_at=NOW,
        temp_gruus=temps,
        transport="tcp",
    )


@pytest.fixture
def store() -> LocationStore:
    return LocationStore()


# ------------------------------------------------------------------------------ lookups


def test_lookup_orders_by_q_then_registration_time(store: LocationStore) -> None:
    store.apply(
        [
            Put(plain("sip:late@192.0.2.1", q=0.5, at=NOW + 10)),
            Put(plain("sip:early@192.0.2.2", q=0.5, at=NOW)),
            Put(plain("sip:best@192.0.2.3", q=0.9, at=NOW + 20)),
        ]
    )
    got = [b.contact_uri for b in store.lookup(AOR, NOW + 30)]
    assert got == ["sip:best@192.0.2.3", "sip:early@192.0.2.2", "sip:late@192.0.2.1"]


def test_lookup_hides_expired_bindings_before_expire_runs(store: LocationStore) -> None:
    store.apply([Put(plain("sip:a@192.0.2.1", expires=60)), Put(plain("sip:b@192.0.2.2"))])
    assert len(store.lookup(AOR, NOW + 59)) == 2
    assert [b.contact_uri for b in store.lookup(AOR, NOW + 60)] == ["sip:b@192.0.2.2"]
    # get() still sees it (the registrar needs its Call-ID/CSeq) until expire() removes it.
    assert store.get(BindingKey.for_contact(AOR, parse_sip_uri("sip:a@192.0.2.1"))) is not None


def test_lookup_of_unknown_aor_is_empty(store: LocationStore) -> None:
    assert store.lookup("nobody@example.com", NOW) == []


def test_get_all_count_aors(store: LocationStore) -> None:
    a = plain("sip:a@192.0.2.1")
    b = plain("sip:b@192.0.2.2", aor="bob@example.com")
    store.apply([Put(a), Put(b)])
    assert store.get(a.key) == a
    assert store.count() == 2
    assert sorted(store.aors()) == ["alice@example.com", "bob@example.com"]
    assert sorted(x.contact_uri for x in store.all()) == ["sip:a@192.0.2.1", "sip:b@192.0.2.2"]


def test_put_same_key_replaces(store: LocationStore) -> None:
    store.apply([Put(outbound(1, "T1"))])
    store.apply([Put(outbound(1, "T2"))])
    (b,) = store.lookup(AOR, NOW)
    assert b.flow_token == "T2"
    assert store.count() == 1


def test_delete_of_missing_key_is_a_no_op(store: LocationStore) -> None:
    store.apply([Delete(BindingKey.for_instance(AOR, IID, 9))])
    assert store.count() == 0


def test_batch_is_applied_in_order(store: LocationStore) -> None:
    b = plain("sip:a@192.0.2.1")
    store.apply([Put(b), Delete(b.key)])
    assert store.count() == 0
    store.apply([Delete(b.key), Put(b)])
    assert store.count() == 1


def test_lookup_instance_orders_by_reg_id(store: LocationStore) -> None:
    store.apply([Put(outbound(2, "T2")), Put(outbound(1, "T1")), Put(plain("sip:x@192.0.2.9"))])
    assert [b.reg_id for b in store.lookup_instance(AOR, IID, NOW)] == [1, 2]


# ------------------------------------------------------------------------------- expiry


def test_expire_removes_on_time_and_reports_deletes(store: LocationStore) -> None:
    a = plain("sip:a@192.0.2.1", expires=60)
    b = plain("sip:b@192.0.2.2", expires=120)
    store.apply([Put(a), Put(b)])
    assert store.next_deadline() == NOW + 60
    assert store.expire(NOW + 59) == []
    assert store.expire(NOW + 60) == [Delete(a.key, RemovalCause.EXPIRED)]
    assert store.next_deadline() == NOW + 120
    assert store.expire(NOW + 1000) == [Delete(b.key, RemovalCause.EXPIRED)]
    assert store.next_deadline() is None and store.count() == 0


def test_refresh_moves_the_deadline(store: LocationStore) -> None:
    a = plain("sip:a@192.0.2.1", expires=60)
    store.apply([Put(a)])
    store.apply([Put(plain("sip:a@192.0.2.1", expires=600))])
    assert store.next_deadline() == NOW + 600
    assert store.expire(NOW + 61) == []  # the old deadline is stale
    assert store.count() == 1


def test_next_deadline_skips_deleted_bindings(store: LocationStore) -> None:
    a = plain("sip:a@192.0.2.1", expires=60)
    store.apply([Put(a), Put(plain("sip:b@192.0.2.2", expires=90))])
    store.apply([Delete(a.key)])
    assert store.next_deadline() == NOW + 90


def test_expiry_heap_stays_bounded_under_many_refreshes(store: LocationStore) -> None:
    for i in range(5000):
        store.apply([Put(plain("sip:a@192.0.2.1", expires=60 + i))])
    assert store.next_deadline() == NOW + 60 + 4999
    # Internal bound (DESIGN.md: memory O(bindings)): stale heap entries get compacted.
    assert len(store._heap) <= 2 * store.count() + 65


# The runtime sleeps until next_deadline() and then calls expire() (DESIGN.md: every state
# machine exposes its next deadline; RFC 3261 §10.3 step 7 / §10.2.1: a binding lapses at its
# expiry). These pin the answer after each kind of write.


def test_next_deadline_is_none_when_empty(store: LocationStore) -> None:
    assert store.next_deadline() is None
    assert store.expire(NOW + 10**9) == []
    assert store.next_deadline() is None


def test_next_deadline_after_puts_is_the_earliest_expiry(store: LocationStore) -> None:
    store.apply([Put(plain("sip:a@192.0.2.1", expires=300))])
    assert store.next_deadline() == NOW + 300
    store.apply([Put(plain("sip:b@192.0.2.2", expires=60)), Put(outbound(1, "T1", expires=90))])
    assert store.next_deadline() == NOW + 60
    store.apply([Put(plain("sip:c@192.0.2.3", expires=600))])  # later: no change
    assert store.next_deadline() == NOW + 60


def test_next_deadline_after_refresh_moving_expiry_later(store: LocationStore) -> None:
    """RFC 3261 §10.3 step 7: a refresh replaces the expiry; the old, earlier one is stale."""
    store.apply(
        [Put(plain("sip:a@192.0.2.1", expires=60)), Put(plain("sip:b@192.0.2.2", expires=90))]
    )
    store.apply([Put(plain("sip:a@192.0.2.1", expires=3600))])
    assert store.next_deadline() == NOW + 90
    store.apply([Put(plain("sip:b@192.0.2.2", expires=7200))])
    assert store.next_deadline() == NOW + 3600


def test_next_deadline_after_refresh_moving_expiry_earlier(store: LocationStore) -> None:
    """A refresh may shorten the binding (a smaller Expires): the earlier time wins at once,
    and the old, later entry does not come back after it."""
    store.apply(
        [Put(plain("sip:a@192.0.2.1", expires=3600)), Put(plain("sip:b@192.0.2.2", expires=600))]
    )
    store.apply([Put(plain("sip:a@192.0.2.1", expires=60))])
    assert store.next_deadline() == NOW + 60
    a_key = plain("sip:a@192.0.2.1").key
    assert store.expire(NOW + 60) == [Delete(a_key, RemovalCause.EXPIRED)]
    assert store.next_deadline() == NOW + 600  # not a's stale NOW + 3600


def test_next_deadline_after_delete(store: LocationStore) -> None:
    a = plain("sip:a@192.0.2.1", expires=60)
    b = outbound(1, "T1", expires=90)
    c = outbound(2, "T2", expires=120)
    store.apply([Put(a), Put(b), Put(c)])
    store.apply([Delete(a.key)])
    assert store.next_deadline() == NOW + 90
    store.remove_flow("T1")
    assert store.next_deadline() == NOW + 120
    store.remove_aor(AOR)
    assert store.next_deadline() is None


def test_next_deadline_after_expire(store: LocationStore) -> None:
    a = plain("sip:a@192.0.2.1", expires=60)
    b = plain("sip:b@192.0.2.2", expires=60)  # same time: the heap compares the keys
    c = outbound(1, "T1", expires=60)
    d = plain("sip:d@192.0.2.4", expires=120)
    store.apply([Put(a), Put(b), Put(c), Put(d)])
    assert store.next_deadline() == NOW + 60
    assert store.expire(NOW + 59.5) == [] and store.next_deadline() == NOW + 60
    assert {ch.key for ch in store.expire(NOW + 60)} == {a.key, b.key, c.key}
    assert store.next_deadline() == NOW + 120
    store.expire(NOW + 120)
    assert store.next_deadline() is None


def test_next_deadline_same_time_keys_of_both_kinds(store: LocationStore) -> None:
    """Equal deadlines order by key; instance and contact keys of one AoR compare without a
    TypeError (their ``kind`` differs before ``reg_id`` is reached)."""
    store.apply([Put(outbound(reg, f"T{reg}", expires=60)) for reg in (3, 1, 2)])
    store.apply([Put(plain("sip:a@192.0.2.1", expires=60))])
    store.apply([Put(outbound(1, "T9", expires=60))])  # same key, same time: a duplicate entry
    assert store.next_deadline() == NOW + 60
    assert len(store.expire(NOW + 60)) == 4
    assert store.next_deadline() is None and store._heap == []


def test_expiry_heap_stays_bounded_under_deletes(store: LocationStore) -> None:
    """Stale entries left by deletes are compacted too, not only those left by refreshes."""
    bindings = [plain(f"sip:u{i}@192.0.2.1", expires=60 + i) for i in range(2000)]
    store.apply([Put(b) for b in bindings])
    store.remove_aor(AOR)  # no Put follows
    assert store.count() == 0
    assert len(store._heap) <= 64  # checked before next_deadline() drops the stale tops
    assert store.next_deadline() is None


def test_random_operations_keep_indexes_consistent() -> None:
    """Model check: after random puts/deletes/expiry/flow deaths the store answers like a dict
    (the indexes switch between one key and a set of keys as an AoR/flow/instance gains and
    loses bindings)."""
    rng = random.Random(7)
    store = LocationStore()
    model: dict[BindingKey, Binding] = {}
    tokens = ["T1", "T2", "T3", None]
    for step in range(2000):
        now = NOW + step
        op = rng.random()
        if op < 0.5:
            reg = rng.randint(1, 4)
            b = outbound(reg, rng.choice(tokens), expires=rng.randint(1, 50) + step)
            store.apply([Put(b)])
            model[b.key] = b
        elif op < 0.7 and model:
            key = rng.choice(list(model))
            store.apply([Delete(key)])
            del model[key]
        elif op < 0.85:
            for change in store.expire(now):
                del model[change.key]
        else:
            token = rng.choice(tokens[:3])
            assert token is not None
            for change in store.remove_flow(token):
                del model[change.key]
        live = sorted(k.reg_id or 0 for k, b in model.items() if b.expires_at > now)
        assert sorted(b.reg_id or 0 for b in store.lookup(AOR, now)) == live
        earliest = min((b.expires_at for b in model.values()), default=None)
        assert store.next_deadline() == earliest
        assert store.count() == len(model)
        assert store.aors() == ([AOR] if model else [])
        by_reg = [b.reg_id for b in store.lookup_instance(AOR, IID, now)]
        assert by_reg == sorted(k.reg_id or 0 for k, b in model.items() if b.expires_at > now)
        for token in ("T1", "T2", "T3"):
            want = {k for k, b in model.items() if b.flow_token == token}
            assert {b.key for b in store.flow_bindings(token)} == want


# ---------------------------------------------------------------------------- flow death


def test_ob_reg_16_remove_flow_removes_exactly_that_flows_bindings(store: LocationStore) -> None:
    f1, f2 = outbound(1, "T1"), outbound(2, "T2")
    other_aor = outbound(1, "T1", aor="bob@example.com")
    direct = plain("sip:desk@192.0.2.7")
    store.apply([Put(f1), Put(f2), Put(other_aor), Put(direct)])
    gone = store.remove_flow("T1")
    assert sorted(gone, key=lambda c: c.key.aor) == [
        Delete(f1.key, RemovalCause.FLOW_FAILED),
        Delete(other_aor.key, RemovalCause.FLOW_FAILED),
    ]
    assert {b.key for b in store.all()} == {f2.key, direct.key}
    assert store.flow_bindings("T1") == []
    assert store.remove_flow("T1") == []


def test_remove_flow_after_replacement_does_not_touch_the_new_flow(store: LocationStore) -> None:
    store.apply([Put(outbound(1, "OLD"))])
    store.apply([Put(outbound(1, "NEW"))])
    assert store.remove_flow("OLD") == []
    assert [b.flow_token for b in store.flow_bindings("NEW")] == ["NEW"]


def test_remove_aor(store: LocationStore) -> None:
    store.apply([Put(outbound(1, "T1")), Put(plain("sip:b@192.0.2.2", aor="bob@example.com"))])
    assert len(store.remove_aor(AOR)) == 1
    assert store.aors() == ["bob@example.com"]


# ---------------------------------------------------------------------------------- GRUU


def test_gruu_find_pub_and_temp(store: LocationStore) -> None:
    store.apply([Put(outbound(1, "T1", temps=("tmpA", "tmpB")))])
    pub = store.find_gruu(parse_sip_uri(f"sip:alice@EXAMPLE.com;gr={IID.upper()}"), NOW)
    assert pub is not None and pub.registered and not pub.temporary
    assert (pub.aor, pub.instance_id) == (AOR, IID)
    for user in ("tmpA", "tmpB"):
        temp = store.find_gruu(parse_sip_uri(f"sip:{user}@example.com;gr"), NOW)
        assert temp is not None and temp.temporary and temp.registered
        assert (temp.aor, temp.instance_id) == (AOR, IID)


@pytest.mark.parametrize(
    "uri",
    [
        "sip:alice@example.com",  # no gr: not a GRUU
        "sip:tmpA@other.example.net;gr",  # temp user minted for another domain
        "sip:never-issued@example.com;gr",
        "sip:alice@example.com;gr=urn:uuid:unknown",  # instance never registered
        "sip:example.com;gr",  # temp GRUU without a user part
    ],
)
def test_gruu_05_unknown_gruus_do_not_match(store: LocationStore, uri: str) -> None:
    store.apply([Put(outbound(1, "T1", temps=("tmpA",)))])
    assert store.find_gruu(parse_sip_uri(uri), NOW) is None


def test_gruu_03_temp_gruus_live_while_any_binding_of_the_instance_lives(
    store: LocationStore,
) -> None:
    store.apply([Put(outbound(1, "T1", temps=("tmpA",))), Put(outbound(2, "T2", temps=("tmpB",)))])
    store.remove_flow("T1")
    temp_a = parse_sip_uri("sip:tmpA@example.com;gr")
    match = store.find_gruu(temp_a, NOW)
    assert match is not None and match.registered
    store.remove_flow("T2")
    assert store.find_gruu(temp_a, NOW) is None
    assert store.find_gruu(parse_sip_uri("sip:tmpB@example.com;gr"), NOW) is None
    pub = store.find_gruu(parse_sip_uri(f"sip:alice@example.com;gr={IID}"), NOW)
    assert pub is not None and not pub.registered


def test_gruu_temp_dropped_by_replacement_is_invalid(store: LocationStore) -> None:
    store.apply([Put(outbound(1, "T1", temps=("tmpA",), call_id="A"))])
    store.apply([Put(outbound(1, "T1", temps=("tmpC",), call_id="B"))])
    assert store.find_gruu(parse_sip_uri("sip:tmpA@example.com;gr"), NOW) is None
    assert store.find_gruu(parse_sip_uri("sip:tmpC@example.com;gr"), NOW) is not None


def test_gruu_registered_false_once_expired(store: LocationStore) -> None:
    store.apply([Put(outbound(1, "T1", temps=("tmpA",), expires=10))])
    match = store.find_gruu(parse_sip_uri("sip:tmpA@example.com;gr"), NOW + 10)
    assert match is not None and not match.registered


# ------------------------------------------------------------------ keys and values


def test_ob_reg_07_instance_key_ignores_contact_uri() -> None:
    assert BindingKey.for_instance(AOR, IID, 1) == (AOR, "instance", IID, 1)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("sip:alice@Example.COM", "sip:alice@example.com", True),
        ("sip:%61lice@example.com", "sip:alice@example.com", True),
        ("sip:Alice@example.com", "sip:alice@example.com", False),  # user is case-sensitive
        ("sip:alice@example.com;foo=1", "sip:alice@example.com", True),  # unknown params ignored
        ("sip:alice@example.com;transport=TCP", "sip:alice@example.com;transport=tcp", True),
        ("sip:alice@example.com;transport=tcp", "sip:alice@example.com", False),
        ("sip:alice@example.com:5060", "sip:alice@example.com", False),
        ("sips:alice@example.com", "sip:alice@example.com", False),
        ("sip:a@h.example?Route=%3Csip:x%3E", "sip:a@h.example", False),  # headers never ignored
        ("sip:%00@h.example", "sip:%00%00@h.example", False),
    ],
)
def test_ob_reg_06_contact_key_follows_rfc3261_19_1_4(a: str, b: str, same: bool) -> None:
    ka = canonical_contact(parse_sip_uri(a))
    kb = canonical_contact(parse_sip_uri(b))
    assert (ka == kb) is same


def test_binding_key_text_round_trip() -> None:
    for key in (
        BindingKey.for_instance("null-\x00-null@example.com", IID, 2**31 - 1),
        BindingKey.for_contact(AOR, parse_sip_uri("sip:%C3%A9@192.0.2.1;transport=ws")),
    ):
        assert BindingKey.from_text(key.text) == key


@pytest.mark.parametrize(
    "text",
    ["", "[]", '["a","contact","x",1]', '["a","instance","x",null]', '["a","other","x",null]', "{"],
)
def test_binding_key_from_bad_text_is_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        BindingKey.from_text(text)


def test_binding_record_round_trip_with_odd_text() -> None:
    b = outbound(3, "T3", temps=("t1", "t2"), aor="null-\x00-null@example.com")
    b = attrs.evolve(
        b, user_agent="Phone \udcff/1.0", contact_params=(("reg-id", "3"), ("lr", None)), q=0.25
    )
    assert Binding.from_record(b.to_record()) == b


def test_binding_from_bad_record_is_value_error() -> None:
    good = outbound(1, "T1").to_record()
    for broken in (
        {k: v for k, v in good.items() if k != "aor"},
        {**good, "cseq": "1"},
        {**good, "expires_at": float("nan")},
        {**good, "contact_params": [["a"]]},
        {**good, "key": "nope"},
    ):
        with pytest.raises(ValueError):
            Binding.from_record(broken)


def test_binding_remaining_rounds_and_never_shows_zero_while_live() -> None:
    b = plain("sip:a@192.0.2.1", expires=3600)
    assert b.remaining(NOW) == 3600
    assert b.remaining(NOW + 0.4) == 3600
    assert b.remaining(NOW + 3599.9) == 1
    assert b.remaining(NOW + 3600) == 0
