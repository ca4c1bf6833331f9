"""Address leases (daemon/leases.py) over a real Store: renewal, expiry, on-demand reclaim,
protection of paying peers, and what survives a restart."""

import ipaddress

from tunnelgate.daemon import leases as L
from tunnelgate.daemon.leases import Leases
from tunnelgate.daemon.store import Store

NET28 = ipaddress.IPv4Interface("100.64.0.1/28")      # 13 leases (.2-.14)
T0 = 1_800_000_000.0


def nobody() -> set[str]:
    return set()


def fill(ls: Leases, n: int, at: float, prefix: str = "k") -> list[str]:
    got = []
    for i in range(n):
        addr, reclaimed = ls.acquire(f"{prefix}{i}", at, i + 1, nobody)
        assert reclaimed == []
        got.append(addr)
    return got


def test_pool_size_counts_hosts_without_the_gateway(tmp_path):
    ls = Leases(Store(tmp_path / "db"), NET28, 600)
    assert ls.pool_size == 13
    assert len(set(fill(ls, 13, T0))) == 13
    assert ls.status() == {"pool": 13, "used": 13, "reclaimed": 0, "reclaimed_on_demand": 0, "idle_s": 600}


def test_a_full_pool_gives_a_new_key_the_longest_idle_unconfirmed_lease(tmp_path):
    ls = Leases(Store(tmp_path / "db"), NET28, 600)
    addrs = fill(ls, 13, T0)
    # k0..k12 handshook at T0 and never sent anything: 2 s later they are reclaimable,
    # the oldest (by its in-memory last-seen) first
    ls.tick(T0 + 1, {"k0": (1, 5)}, nobody)            # k0 sent something: confirmed, fresh
    addr, reclaimed = ls.acquire("new", T0 + L.RECLAIM_UNCONFIRMED_S + 0.5, 99, nobody)
    assert reclaimed == ["k1"] and addr == addrs[1]
    assert ls.store.leases_reclaimed() == 1 and ls.on_demand == 1


def test_fresh_or_recently_active_leases_are_not_taken_on_demand(tmp_path):
    ls = Leases(Store(tmp_path / "db"), NET28, 600)
    fill(ls, 13, T0)
    assert ls.acquire("new", T0 + 1, 1, nobody) == (None, [])          # all handshook 1 s ago
    sigs = {f"k{i}": (i, 1) for i in range(13)}                        # every key confirmed
    ls.tick(T0 + 1, sigs, nobody)
    assert ls.acquire("new", T0 + 1 + L.RECLAIM_IDLE_S - 1, 1, nobody) == (None, [])
    addr, reclaimed = ls.acquire("new", T0 + 1 + L.RECLAIM_IDLE_S, 1, nobody)
    assert addr is not None and len(reclaimed) == 1


def test_protected_keys_are_never_reclaimed(tmp_path):
    ls = Leases(Store(tmp_path / "db"), NET28, 600)
    fill(ls, 13, T0)
    everyone = {f"k{i}" for i in range(13)}
    assert ls.acquire("new", T0 + 10_000, 1, lambda: everyone) == (None, [])
    assert ls.expire(T0 + 10_000, lambda: everyone) == []
    paying = everyone - {"k7"}
    addr, reclaimed = ls.acquire("new", T0 + 10_000, 1, lambda: paying)
    assert reclaimed == ["k7"]


def test_idle_leases_expire_and_traffic_renews(tmp_path):
    ls = Leases(Store(tmp_path / "db"), NET28, 600)
    fill(ls, 3, T0)
    # k1's session keeps opening datagrams: its signature changes every tick
    for t in range(0, 700, 50):
        gone = ls.tick(T0 + t, {"k0": (1, 1), "k1": (2, t + 1), "k2": None}, nobody)
        if t < 600:
            assert gone == []
    assert ls.expire(T0 + 700, nobody) == []            # k0, k2 went at T0+650; k1 renewed then
    assert set(ls.store.peer_addresses()) == {"k1"}
    assert ls.store.leases_reclaimed() == 2


def test_last_seen_is_saved_in_batches_and_expiry_continues_across_a_restart(tmp_path):
    store = Store(tmp_path / "db")
    ls = Leases(store, NET28, 600)
    fill(ls, 2, T0)
    ls.tick(T0, {}, nobody)                                        # first save
    ls.tick(T0 + 30, {"k0": (1, 9)}, nobody)                       # renewed in memory only
    assert dict((k, t) for k, _, t in store.leases_by_age(T0 + 1000, 10))["k0"] == T0
    ls.tick(T0 + L.SAVE_EVERY_S, {"k0": (1, 9)}, nobody)           # the batch goes to disk
    assert dict((k, t) for k, _, t in store.leases_by_age(T0 + 1000, 10))["k0"] == T0 + 30
    store.close()
    # a restart: the same leases, the same addresses, and they keep ageing
    store = Store(tmp_path / "db")
    again = Leases(store, NET28, 600)
    assert set(store.peer_addresses()) == {"k0", "k1"}
    assert again.expire(T0 + 610, nobody) == ["k1"]
    assert again.expire(T0 + 640, nobody) == ["k0"]


def test_a_reclaimed_key_keeps_its_handshake_timestamp_and_can_lease_again(tmp_path):
    store = Store(tmp_path / "db")
    ls = Leases(store, NET28, 600)
    ls.acquire("k", T0, 12345, nobody)
    assert ls.expire(T0 + 601, nobody) == ["k"]
    assert store.handshake_timestamps() == {"k": 12345}       # its old INITs stay replays
    addr, _ = ls.acquire("k", T0 + 700, 20000, nobody)
    assert addr is not None and store.handshake_timestamps() == {"k": 20000}


def test_sixteen_keys_in_turn_on_a_28_all_get_addresses(tmp_path):
    """The issue's measurement: 16 fresh keys one after another (3 s each) on a /28."""
    ls = Leases(Store(tmp_path / "db"), NET28, 600)
    for i in range(16):
        at = T0 + 3 * i
        addr, _ = ls.acquire(f"k{i}", at, 1, nobody)
        assert addr is not None, i
        ls.tick(at + 0.1, {f"k{i}": (i, 1)}, nobody)              # it used its session ...
        ls.tick(at + 2.9, {f"k{i}": (i, 1)}, nobody)              # ... then went quiet
    # the later ones waited RECLAIM_IDLE_S of silence from their predecessors
