"""The gateway engine's state saved incrementally (one row per record, only what changed)
and restored from the rows; an older single-blob snapshot is migrated."""

import json
import threading

from engine_world import DST, PEER, World, pricing

from tunnelgate import packet as pk
from tunnelgate.daemon.market import Saver
from tunnelgate.daemon.store import Store
from tunnelgate.meter import FORWARD
from tunnelgate.protocol.seller import Seller


def _norm(snap):
    snap = json.loads(json.dumps(snap))
    snap["contracts"].sort(key=lambda d: d["contract_id"])
    snap["flows"].sort(key=lambda d: (d["peer"], d["key"]))
    return snap


def _restored(store, now):
    gw = Seller(pricing(contract_kb=10))
    assert Saver(store, gw, threading.Lock()).restore(now)
    return gw


def test_changes_only_and_rows_restore_the_same_state(tmp_path):
    w = World(pr=pricing(contract_kb=10), loss=0)
    store = Store(tmp_path / "db")
    saver = Saver(store, w.gw, threading.Lock())
    assert not saver.restore(w.now) and saver.incremental
    w.send()
    w.run(1)
    saver.maybe_save(w.now, force=True)
    for _ in range(3):
        assert w.send() == FORWARD
    ch = w.gw.snapshot_changes()                     # only the counters moved
    assert ch["contracts"] == [] and ch["flows"] == [] and len(ch["counters"]) == 1
    store.save_changes("engine", ch)
    assert w.gw.snapshot_changes()["counters"] == []  # nothing new
    w.send()
    saver.maybe_save(w.now, force=True)
    assert _norm(store.load_records("engine")) == _norm(w.gw.snapshot())
    gw2 = _restored(store, w.now)
    assert _norm(gw2.snapshot()) == _norm(w.gw.snapshot())
    [c] = gw2.contracts(PEER, w.now)
    assert c["used"] == 5000 and c["state"] == "PAID"
    # the contract runs out: its row goes, the next one's comes
    n = 0
    while w.send() == FORWARD:
        n += 1
    w.run(2)
    saver.maybe_save(w.now, force=True)
    assert _norm(store.load_records("engine")) == _norm(w.gw.snapshot())
    rows = {r[0]: json.loads(r[1])["state"] for r in store.execute("SELECT id, data FROM contracts")}
    assert set(rows) == {c["contract_id"] for c in w.gw.contracts(PEER, w.now, history=True)}
    assert rows[c["contract_id"]] == "EXHAUSTED"
    gw3 = _restored(store, w.now)
    assert c["contract_id"] not in {x["contract_id"] for x in gw3.contracts(PEER, w.now)}


def test_old_blob_is_migrated_to_rows(tmp_path):
    w = World(pr=pricing(contract_kb=10), loss=0)
    w.send()
    w.run(1)
    w.send()
    store = Store(tmp_path / "db")
    store.save_snapshot("engine", json.dumps(w.gw.snapshot()))   # what older versions wrote
    gw2 = Seller(pricing(contract_kb=10))
    saver = Saver(store, gw2, threading.Lock())
    assert saver.restore(w.now)
    saver.maybe_save(w.now)
    assert store.load_snapshot("engine") is None
    assert _norm(store.load_records("engine")) == _norm(w.gw.snapshot())
    gw3 = _restored(store, w.now)
    assert gw3.contracts(PEER, w.now)[0]["used"] == 2000
    assert gw3.outbound(PEER, pk.addr_bytes(DST), 1000, bytes(1000), w.now) == FORWARD


def _contract_running(tmp_path):
    """A World whose first contract runs, with a Store and its Saver."""
    w = World(pr=pricing(contract_kb=10), loss=0)
    store = Store(tmp_path / "db")
    saver = Saver(store, w.gw, threading.Lock())
    w.send()
    w.run(1)
    return w, store, saver


def test_a_failed_save_is_written_whole_next_time(tmp_path):
    w, store, saver = _contract_running(tmp_path)
    saver.maybe_save(w.now, force=True)
    while w.send() == FORWARD:
        pass
    w.run(2)                                          # first contract ended: its row must go
    real = store.save_changes
    store.save_changes = lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
    try:
        saver.maybe_save(w.now, force=True)
    except OSError:
        pass
    store.save_changes = real
    saver.maybe_save(w.now, force=True)
    assert _norm(store.load_records("engine")) == _norm(w.gw.snapshot())


def test_a_restart_reads_only_the_newest_ended_records_the_engine_keeps(tmp_path):
    # ended contracts keep their records for ever (the history); a restart reads only as many
    # of them as the engine keeps in memory, newest first, and every live one
    w, store, saver = _contract_running(tmp_path)
    for _ in range(6):                                # six contracts run out, one after another
        while w.send() == FORWARD:
            pass
        w.run(2)
        saver.maybe_save(w.now, force=True)
    ended = [c["contract_id"] for c in w.gw.contracts(PEER, w.now, history=True)
             if c["state"] in ("EXHAUSTED", "EXPIRED", "REVOKED")]
    live = {c["contract_id"] for c in w.gw.contracts(PEER, w.now)}
    assert len(ended) >= 6 and live
    rows = {r[0] for r in store.execute("SELECT id FROM contracts")}
    assert set(ended) | live <= rows                 # all on disk
    got = {d["contract_id"] for d in store.load_records("engine", ended_keep=3)["contracts"]}
    assert got == live | set(ended[-3:])              # the newest three ended, all live
    gw2 = Seller(pricing(contract_kb=10))
    gw2.tombstones.cap = 3
    asked, real = [], store.load_records
    store.load_records = lambda name, **kw: asked.append(kw) or real(name, **kw)
    assert Saver(store, gw2, threading.Lock()).restore(w.now)
    assert asked == [{"ended_keep": 3}]
    store.load_records = real
    assert {c["contract_id"] for c in gw2.contracts(PEER, w.now, history=True)} == live | set(ended[-3:])
    assert {d["contract_id"] for d in store.load_records("engine")["contracts"]} == rows
