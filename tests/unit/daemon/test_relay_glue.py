"""ResaleGlue (daemon/relay.py): the relay's two engines' events reach Resale before either
side of the daemon takes them, and what Resale's callbacks make is seen too."""

from __future__ import annotations

from tunnelgate.daemon.relay import ResaleGlue


class Engine:
    def __init__(self):
        self.events = []

    def take_events(self):
        out, self.events = self.events, []
        return out


class FakeResale:
    """Records what it saw; on an upstream "accepted" it calls the seller back, which emits
    a "proposed" event (as Seller.upstream_ready does)."""

    def __init__(self, seller):
        self.seller, self.seen, self.polls, self.own = seller, [], 0, []

    def on_events(self, se, be, now):
        self.seen.append((list(se), list(be)))
        if "accepted" in be:
            self.seller.events.append("proposed")

    def poll(self, now):
        self.polls += 1

    def take_events(self):
        out, self.own = self.own, []
        return out


def test_events_reach_resale_first_then_each_side():
    seller, buyer = Engine(), Engine()
    resale = FakeResale(seller)
    glue = ResaleGlue(seller, buyer, resale)
    buyer.events.append("accepted")
    seller.events.append("paid")
    resale.own.append("upstream_renewal_due")
    # the client side takes its events first: resale saw both sides', and acted on the seller
    assert glue.buyer_events(1.0) == ["accepted"]
    assert glue.seller_touched
    assert resale.seen == [(["paid"], ["accepted"]), (["proposed"], [])]
    assert resale.polls == 1
    # the gateway side gets every seller event, the callback's and the resale's own, once
    assert glue.seller_events(2.0) == ["paid", "proposed", "upstream_renewal_due"]
    assert not glue.seller_touched
    assert glue.seller_events(3.0) == [] and glue.buyer_events(3.0) == []
    assert len(resale.seen) == 2


def test_a_callback_loop_is_bounded():
    seller, buyer = Engine(), Engine()

    class Echo(FakeResale):
        def on_events(self, se, be, now):
            self.seen.append(1)
            seller.events.append("again")       # every round makes another event

    resale = Echo(seller)
    glue = ResaleGlue(seller, buyer, resale)
    seller.events.append("first")
    out = glue.seller_events(1.0)
    assert 2 <= len(resale.seen) <= 2 * 8 and out[0] == "first"
