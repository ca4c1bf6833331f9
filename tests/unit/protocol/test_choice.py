"""Choosing per destination among three gateways: cheapest first, quality breaks
ties, a dishonest gateway goes last, moves only beyond the switch margin or on failure."""

from tunnelgate.protocol.choice import Chooser, Offer, Record, usage_disagrees

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


def offers(pa=100, pb=200, pc=300, up=(True, True, True), rtt=(10.0, 10.0, 10.0), rec=None):
    rec = rec or {}
    return [Offer(g, p, u, r, 0.0, rec.get(g, Record())) for g, p, u, r in zip((A, B, C), (pa, pb, pc), up, rtt)]


def test_cheapest_first_then_quality():
    ch = Chooser()
    d = ch.choose("198.18.2.2", offers())
    assert d.gateway == A and d.moved and d.previous is None
    ch2 = Chooser()
    assert ch2.choose("d", offers(100, 100, 300, rtt=(50.0, 5.0, 1.0))).gateway == B


def test_hysteresis_no_flap_on_ties_and_small_drops():
    ch = Chooser(switch_margin=0.2)
    assert ch.choose("d", offers(100, 200, 300)).gateway == A
    for pb in (100, 95, 81, 100, 90):   # B at or up to 19 % below A: stay on A
        d = ch.choose("d", offers(100, pb, 300))
        assert d.gateway == A and not d.moved, pb
    d = ch.choose("d", offers(100, 79, 300))
    assert d.gateway == B and d.moved and "cheaper" in d.reason


def test_failover_and_return():
    ch = Chooser()
    ch.choose("d", offers())
    d = ch.choose("d", offers(up=(False, True, True)))
    assert (d.previous, d.gateway) == (A, B) and "stopped answering" in d.reason
    # A is back and cheaper by 50 %: it wins again only through the margin rule
    d = ch.choose("d", offers())
    assert d.gateway == A and "cheaper" in d.reason


def test_a_gateway_that_took_money_and_did_not_deliver_goes_last():
    ch = Chooser()
    ch.choose("d", offers())
    bad = {A: Record(bought=1, paid=1, unserved=1)}
    d = ch.choose("d", offers(rec=bad))
    assert d.gateway == B and "delivered nothing" in d.reason
    # even when it is the cheapest by far, it stays last
    assert Chooser().choose("e", offers(1, 200, 300, rec=bad)).gateway == B
    # and it is still used when nothing else is up
    assert Chooser().choose("f", offers(1, 200, 300, up=(True, False, False), rec=bad)).gateway == A


def test_max_price_applies_to_every_gateway():
    ch = Chooser(max_price=150)
    assert ch.choose("d", offers(200, 100, 300)).gateway == B
    d = ch.choose("d", offers(200, 160, 300))
    assert d.gateway is None and "max_price" in d.reason


def test_forget_returns_destinations_to_move():
    ch = Chooser()
    for dest in ("d1", "d2"):
        ch.choose(dest, offers())
    ch.choose("d3", offers(300, 100, 200))
    assert ch.carried_by(A) == ["d1", "d2"] and ch.forget(A) == ["d1", "d2"] and ch.carried_by(B) == ["d3"]


def test_usage_disagreement_tolerance():
    assert not usage_disagrees(1_000_000, 1_000_000)
    assert not usage_disagrees(1_040_000, 1_000_000)
    assert usage_disagrees(1_200_000, 1_000_000)
    assert not usage_disagrees(60_000, 0) and usage_disagrees(70_000, 0)
    assert Record(disagreements=3, paid=2).verdict() and not Record(disagreements=3, paid=10).verdict()
