"""The gateway's per-packet contract lookup and metering is O(1) in the number of
contracts and peers -- checked by counting work, never by timing:

- dict lookups and iterations, through counting dicts swapped in for every dict
  the engine and its meter keep (books, flows per peer, contracts, mask cache);
- every Python and C function call made during one packet (sys.setprofile) and
  every line of Python executed (sys.settrace).

Both must be the same with 10, 1,000 and 10,000 live contracts.
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest

from tglab.engines import EngineBuilder, dest
from tunnelgate.meter import FORWARD, HELD

SIZES = (10, 1_000, 10_000)
NOW = 1000.5


class CountingDict(dict):
    """A dict that counts lookups and iterations into a shared Counter."""

    counts: Counter = Counter()

    def get(self, *a):
        CountingDict.counts["lookup"] += 1
        return super().get(*a)

    def __getitem__(self, k):
        CountingDict.counts["lookup"] += 1
        return super().__getitem__(k)

    def __contains__(self, k):
        CountingDict.counts["lookup"] += 1
        return super().__contains__(k)

    def __iter__(self):
        CountingDict.counts["iterate"] += 1
        return super().__iter__()

    def keys(self):
        CountingDict.counts["iterate"] += 1
        return super().keys()

    def values(self):
        CountingDict.counts["iterate"] += 1
        return super().values()

    def items(self):
        CountingDict.counts["iterate"] += 1
        return super().items()


def instrument(engine) -> None:
    meter = engine.meter
    meter.peers = CountingDict({p: CountingDict(f) for p, f in meter.peers.items()})
    engine.books = CountingDict(engine.books)
    for peer, book in dict.items(engine.books):
        book.flows = meter.peers[peer]            # the book and the meter share one table
        book.live, book.ended, book.unpaid = (CountingDict(book.live), CountingDict(book.ended),
                                              CountingDict(book.unpaid))
    for m in (meter.m4, meter.m6):
        m.cache = CountingDict(m.cache)


def engine_with(n: int, scope="host", per_peer: int | None = 100):
    """n live contracts, per_peer per peer (None: all on one peer)."""
    b = EngineBuilder(per_peer=per_peer or n, scope=scope)
    b.grow(n)
    assert sum(len(book.live) for book in b.engine.books.values()) == n
    return b


def dict_work(fn) -> Counter:
    CountingDict.counts = Counter()
    fn()
    counts, CountingDict.counts = CountingDict.counts, Counter()
    return counts


def calls_in(fn) -> tuple[int, int]:
    """(function calls, Python and C; Python lines executed) while fn runs: a loop in
    Python code shows in the lines, a call per item in the calls."""
    calls = lines = 0

    def prof(frame, event, arg):
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    def trace(frame, event, arg):
        nonlocal lines
        if event == "line":
            lines += 1
        return trace

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(None)
    return calls, lines


def per_packet(n: int, scope="host", per_peer: int | None = 100) -> dict:
    b = engine_with(n, scope, per_peer)
    engine = b.engine
    instrument(engine)
    peer, dst = b.flows[-1]                       # the newest peer: its flows dict is full
    pkt = bytes(100)
    out = {}
    out["out_dicts"] = dict_work(lambda: engine.outbound(peer, dst, 100, pkt, NOW))
    out["in_dicts"] = dict_work(lambda: engine.inbound(peer, dst, 100, NOW))
    out["out_burst_dicts"] = dict_work(lambda: engine.outbound_burst(peer, dst, 3000, 3, NOW))
    out["in_burst_dicts"] = dict_work(lambda: engine.inbound_burst(peer, dst, 3000, NOW))
    # warm-up done above; now count calls
    out["out_calls"] = calls_in(lambda: engine.outbound(peer, dst, 100, pkt, NOW))
    out["in_calls"] = calls_in(lambda: engine.inbound(peer, dst, 100, NOW))
    assert engine.outbound(peer, dst, 100, pkt, NOW) == FORWARD
    assert engine.inbound(peer, dst, 100, NOW) == FORWARD
    return out


@pytest.mark.parametrize("scope,per_peer", [("host", 100), ("host", None), (24, 100)],
                         ids=["100-per-peer", "all-on-one-peer", "scope24-100-per-peer"])
def test_forwarding_work_per_packet_does_not_grow_with_contracts(scope, per_peer):
    results = {n: per_packet(n, scope, per_peer) for n in SIZES}
    first = results[SIZES[0]]
    for n, r in results.items():
        assert r == first, f"per-packet work at {n} contracts differs from {SIZES[0]}: {r} vs {first}"
    for key in ("out_dicts", "in_dicts", "out_burst_dicts", "in_burst_dicts"):
        assert first[key]["iterate"] == 0, f"{key}: a dict is iterated per packet"
        # peer -> flows, destination -> flow (+ the mask cache with a prefix scope)
        assert first[key]["lookup"] <= (2 if scope == "host" else 3), (key, first[key])


@pytest.mark.parametrize("per_peer", [100, None], ids=["100-per-peer", "all-on-one-peer"])
def test_new_destination_is_constant_work(per_peer):
    """The first packet to a new destination (held, PROPOSE) does the same work whatever
    the number of contracts the gateway (and this peer) already has."""
    work = {}
    for n in SIZES:
        b = engine_with(n, per_peer=per_peer)
        engine = b.engine
        instrument(engine)
        peer = b.flows[-1][0]
        pkt = bytes(60)
        assert engine.outbound(peer, dest(60000), 60, pkt, NOW) == HELD   # warm-up
        engine.take_outgoing(), engine.take_events()
        d = dict_work(lambda: engine.outbound(peer, dest(60001), 60, pkt, NOW))
        c = calls_in(lambda: engine.outbound(peer, dest(60002), 60, pkt, NOW))
        work[n] = (dict(d), c)
    first = work[SIZES[0]]
    assert all(w == first for w in work.values()), work
    assert first[0].get("iterate", 0) == 0


def test_contracts_are_spread_over_peers_as_built():
    b = engine_with(1_000)
    assert len(b.engine.meter.peers) == 10
    assert all(len(flows) == 100 for flows in b.engine.meter.peers.values())
