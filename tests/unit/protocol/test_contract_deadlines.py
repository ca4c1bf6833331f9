"""The engines' deadlines: the daemon's control thread polls an engine only when its
next_deadline() is due or the data path says it has output (no fixed tick), so every
timer a poll used to find by scanning must be filed, and what traffic makes due must
show on the data path. And the timers' memory: stale ones are swept."""

import gc
import tracemalloc

import pytest

from tunnelgate.money import parse_price
from tunnelgate.protocol import events as E
from tunnelgate.protocol import messages as m
from tunnelgate.protocol.buyer import Buyer, ClientPolicy
from tunnelgate.protocol.seller import Pricing, Seller

from engine_world import DST, PEER, World, ip4, policy, pricing
from tglab.engines import EngineBuilder

NOW = 1_000_000.0
DST_KEY = bytes((198, 18, 2, 7))


def propose(b: Buyer, limit_kb=1000, time_s=600, cid="c1", now=NOW):
    b.on_message(PEER, m.Propose(cid, f"{DST}/32", parse_price("0.5"), limit_kb, time_s, ("dummy",),
                                 "acct", 1, 30, 100), now)
    b.take_outgoing()
    b.take_events()


def requests(b: Buyer) -> list:
    return [msg for _, msg in b.take_outgoing() if isinstance(msg, m.Request)]


def test_buyer_next_deadline_is_its_time_renewal_point_and_poll_renews_there():
    b = Buyer(policy(time_renewal_s=60))
    assert b.next_deadline() is None
    propose(b, time_s=600)
    b.poll(b.next_deadline())                   # a contract started: looked at once
    assert b.next_deadline() == pytest.approx(NOW + 600 - 60) and b.next_deadline() > NOW + 540
    b.poll(NOW + 540)                           # not due: nothing
    assert not requests(b)
    b.poll(NOW + 540.001)
    assert [r.destination for r in requests(b)] == [f"{DST}/32"]
    # asked: the next look is the request's retry, then the expiry
    assert b.next_deadline() == NOW + 540.001 + 10


def test_a_contract_used_up_with_no_packet_after_ends_when_the_control_thread_looks():
    b = Buyer(policy(data_renewal_kb=0))
    propose(b, limit_kb=10)
    b.poll(NOW)
    b.snapshot()                                # (what has_output also says: unsaved changes)
    assert not b.has_output
    for _ in range(10):
        b.outbound(DST_KEY, 1000, NOW + 1)      # exactly its 10 KB
    # the data thread wakes the control thread, whose deadline is now
    assert b.has_output and b.next_deadline() <= NOW + 1
    b.poll(NOW + 1)
    assert [type(e) for e in b.take_events()] == [E.Exhausted]
    b.snapshot()
    assert not b.has_output


def test_renewal_by_the_rate_past_half_comes_from_the_data_path_without_a_poll():
    """A flow that speeds up after its half-way check: _running_out (less than
    RENEW_LEAD_S left at the rate since the start) used to be found by the 50 ms poll."""
    b = Buyer(policy(data_renewal_kb=10))
    propose(b, limit_kb=1000)                   # 1,000,000 bytes, renewal by margin at 990,000
    b.poll(NOW)
    for i in range(250):                        # a quarter in the first 10 s
        b.outbound(DST_KEY, 1000, NOW + 10)
    for i in range(250):                        # half at 20 s: the rest lasts at this rate
        b.outbound(DST_KEY, 1000, NOW + 20)
    assert not requests(b)
    sent = 0
    while not requests(b):                      # then fast: at 5 s of the mean rate left
        b.outbound(DST_KEY, 1000, NOW + 20.5)
        sent += 1
    used = 500_000 + sent * 1000
    assert used < 990_000 and (1_000_000 - used) * 20.5 < used * 5
    assert (1_000_000 - used + 1000 * 1_000_000 // 32) * 20.5 >= (used - 1000 * 1_000_000 // 32) * 5


def test_a_paused_buyer_renews_when_resumed_at_the_next_poll():
    b = Buyer(policy(time_renewal_s=60))
    propose(b, time_s=600)
    b.poll(NOW)
    b.paused = True
    b.poll(NOW + 540.001)
    assert not requests(b)
    b.paused = False
    assert b.next_deadline() <= NOW + 541
    b.poll(NOW + 541)
    assert len(requests(b)) == 1


def test_engines_polled_only_at_their_deadlines_keep_traffic_flowing():
    """The World of test_contract_engines, but each engine polled only when its
    next_deadline() is due (as the daemon's control thread does: what the data path makes
    due, it files as a timer due now): time renewals come in time and no packet waits for
    a contract."""
    w = World(po=policy(time_renewal_s=5, data_renewal_kb=20), pr=pricing(contract_time_s=30,
                                                                         contract_kb=10_000),
              loss=0.0, reorder=0.0)
    polls = []

    def poll_when_due(engine):
        real = engine.poll

        def poll(now):
            d = engine.next_deadline()
            if d is not None and d <= now:
                polls.append(now)
                real(now)
        engine.poll = poll

    poll_when_due(w.gw)
    poll_when_due(w.cl)
    out = w.stream(2000, 0.05, size=500)        # 100 s: three contracts' time, 1 MB
    assert out[0] != 0 and out[5:].count(0) == len(out) - 5    # FORWARD (0) after the first ones
    ended = [e for e in w.cev if type(e) is E.Expired]
    renewed = [e for e in w.cev if type(e) is E.RenewalRequested]
    assert len(ended) >= 2 and len(renewed) >= len(ended)
    assert len(polls) < 2000 // 4               # not every step


def test_stale_timers_are_swept_from_a_book():
    """A paid contract's grace end and an accepted proposal's timeout can do nothing:
    a book holds at most about twice its live timers, not three per contract."""
    s = Seller(pricing(max_pending_proposals=10_000, max_unpaid_contracts=10_000, grace_time_s=600))
    peer = b"\x02" * 32
    for j in range(600):
        dst = bytes((198, 19, j >> 8, j & 255))
        s.outbound(peer, dst, 60, ip4(f"198.19.{j >> 8}.{j & 255}", 60), NOW)
        for _, msg in s.take_outgoing():
            if isinstance(msg, m.Propose):
                s.on_message(peer, m.Accept(msg.contract_id), NOW)
                s.payment_confirmed(msg.contract_id, NOW)
        s.take_outgoing()
        s.take_events()
    b = s.books[peer]
    assert len(b.live) == 600
    assert len(b._timers) <= 2 * (len(b.live) + 1) + 1


def test_engine_memory_per_contract():
    """What a contract costs a gateway's engine (Python objects; tracemalloc): its terms,
    its state, its flow, its timers and indexes. 2.3 KB before the flow's queue stopped
    being a deque and stale timers were swept."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        b = EngineBuilder().grow(2000)
        gc.collect()
        per = (tracemalloc.get_traced_memory()[0] - base) / 2000
    finally:
        tracemalloc.stop()
    assert len(b.flows) == 2000
    assert per < 1600, f"{per:.0f} bytes per contract"
