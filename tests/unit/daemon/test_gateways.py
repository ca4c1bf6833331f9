"""The client's Market with three gateways in memory: the cheapest is chosen once all are
priced, a price within the switch margin keeps a destination and one past it moves it, a
gateway silent while sent to is declared down and its destinations move, a payment with no
service after it puts a gateway last; the record survives a restart; the receiver splits
datagrams by gateway."""

import threading
from types import SimpleNamespace

from tunnelgate.config_market import Choice, Discovery, GatewaySpec
from tunnelgate.daemon.gateways import DEFAULTS, UNSERVED_S, Market
from tunnelgate.daemon.initiators import Initiators
from tunnelgate.daemon.links import Links, SellerLink
from tunnelgate.daemon.store import Store
from tunnelgate.protocol import events as E
from tunnelgate.protocol.buyer import Buyer, ClientPolicy


class FakeSession:
    def __init__(self):
        self.established = True
        self.unanswered_since = None
        self.source = None
        self.calls = []

    def owns(self, index):
        return False

    def receive_groups(self, groups, now, lock=None):
        self.calls.append(groups)
        return [("x", 1, g[0]) for g in groups]


def make(tmp_path, store=None, fetched=None):
    links, events, quotes = Links(), [], []
    store = store or Store(tmp_path / "db.sqlite")
    engine = Buyer(ClientPolicy(max_price=10**9))

    def new_link(gw):
        link = SellerLink(gw.key, FakeSession(), gw.endpoint)
        links.add(link)
        return link
    m = Market(Choice(switch_margin=0.2, failover_s=0.6), Discovery(), links, engine, threading.Lock(), store,
               new_link, lambda key, dest: quotes.append((key, dest)), events.append,
               fetch_advert=None if fetched is None else fetched.append)
    return m, links, events, quotes, store


KEYS = [bytes([i]) * 32 for i in (1, 2, 3)]


def up_with_prices(m, prices, now):
    for i, key in enumerate(KEYS):
        m.add(GatewaySpec((f"198.18.1.{11 + i}", 51900), key, f"gw{i + 1}"), now)
        m.on_handshake(key, {}, "100.64.0.2/24", now)
    m.tick(now, 1000.0)          # probes go out: answer them with the prices
    answer(m, prices, now)


def quote(key, price, retry_after_s=0, reason=""):
    return SimpleNamespace(counterpart=key, destination="0.0.0.0/32", price=price, retry_after_s=retry_after_s,
                           reason=reason)


def answer(m, prices, now):
    for key, price in zip(KEYS, prices):
        gw = m.gateways[key]
        while gw.probes:
            m.on_quote(quote(key, price), now + 0.004, 1000.0 + now)


def test_cheapest_chosen_after_all_priced_and_moves_only_past_the_margin(tmp_path):
    m, links, events, quotes, _ = make(tmp_path)
    up_with_prices(m, [500, 600, 800], 0.0)
    m.tick(0.1, 1000.1)
    assert m.chooser.current[DEFAULTS[0]] == KEYS[0]
    assert links.router.lookup(bytes(4)).peer == KEYS[0]
    m.gateways[KEYS[0]].quotes[DEFAULTS[0]] = 700     # 600 is not 20 % below 700: kept
    m.tick(0.2, 1000.2)
    assert m.chooser.current[DEFAULTS[0]] == KEYS[0]
    m.gateways[KEYS[0]].quotes[DEFAULTS[0]] = 900     # 600 <= 720: moves
    m.tick(0.3, 1000.3)
    assert links.router.lookup(bytes(4)).peer == KEYS[1]
    assert any(type(e) is E.DestinationMoved and "cheaper" in e.reason for e in events)


def test_silence_while_sending_fails_over(tmp_path):
    m, links, events, _, _ = make(tmp_path)
    up_with_prices(m, [500, 600, 800], 0.0)
    m.tick(0.1, 1000.1)
    m.gateways[KEYS[0]].link.session.unanswered_since = 0.2      # sending, nothing back
    for t in (0.3, 0.5, 0.7, 0.9):
        m.tick(t, 1000 + t)
        for key, price in zip(KEYS[1:], (600, 800)):       # the others answer their probes
            while m.gateways[key].probes:
                m.on_quote(quote(key, price), t, 1000.0 + t)
    assert m.gateways[KEYS[0]].state == "down"
    assert links.router.lookup(bytes(4)).peer == KEYS[1]


def test_a_payment_without_service_puts_a_gateway_last_and_is_kept(tmp_path):
    m, links, events, _, store = make(tmp_path)
    up_with_prices(m, [500, 600, 800], 0.0)
    m.tick(0.1, 1000.1)
    c = SimpleNamespace(up=0, down=0)
    m.engine.books[KEYS[0]] = SimpleNamespace(find=lambda cid: c)
    m.on_event(E.Paid(E.BUYER, KEYS[0], "c1", "198.18.21.2/32"), 1000.2)
    c.up = 5000
    m.tick(0.2, 1000.2 + UNSERVED_S)
    assert m.record(KEYS[0]).unserved == 1 and m.record(KEYS[0]).verdict()
    assert links.router.lookup(bytes(4)).peer == KEYS[1]
    m2, *_ = make(tmp_path, store)                 # a restart reads the record back
    assert m2.record(KEYS[0]).unserved == 1 and m2.record(KEYS[0]).paid == 1


def test_receiver_splits_groups_by_gateway_endpoint():
    links = Links()
    a, b = (SellerLink(k, FakeSession(), ep) for k, ep in zip(KEYS, [("198.18.1.11", 1), ("198.18.1.12", 1)]))
    links.add(a)
    links.add(b)
    r = Initiators(links)
    out = r.receive_groups([(b"1" * 16, 16, ("198.18.1.11", 1)), (b"2" * 16, 16, ("198.18.1.12", 1)),
                            (b"3" * 16, 16, ("198.18.1.12", 1)), (b"4" * 16, 16, ("10.0.0.9", 1))], 0.0)
    assert [x[2] for x in out] == [b"1" * 16, b"2" * 16, b"3" * 16]
    assert len(a.session.calls) == 1 and len(b.session.calls) == 1 and len(b.session.calls[0]) == 2
    assert r.stats["unknown_source"] == 1


def test_receiver_caches_the_last_gateway_and_never_uses_a_replaced_link():
    links = Links()
    a, b = (SellerLink(k, FakeSession(), ep) for k, ep in zip(KEYS, [("198.18.1.11", 1), ("198.18.1.12", 1)]))
    links.add(a)
    links.add(b)
    r = Initiators(links)
    from_b = [(b"1" * 16, 16, ("198.18.1.12", 1)), (b"2" * 16, 16, ("198.18.1.12", 1))]
    r.receive_groups(from_b, 0.0)
    b.endpoint = ("198.18.1.99", 1)          # the cache holds the source, not the endpoint: ...
    r.receive_groups(from_b, 0.0)            # ... the next batch from it goes to b in one call
    assert b.session.calls == [from_b, from_b] and not a.session.calls
    b2 = SellerLink(KEYS[1], FakeSession(), ("198.18.1.12", 1))
    links.add(b2)                            # b's link replaced (a new session): the cache is stale
    r.receive_groups(from_b, 0.0)
    assert len(b.session.calls) == 2 and b2.session.calls == [from_b]
    mixed = [from_b[0], (b"3" * 16, 16, ("198.18.1.11", 1))]
    r.receive_groups(mixed, 0.0)             # another source in the batch: dispatched per group
    assert a.session.calls == [[mixed[1]]] and b2.session.calls[-1] == [mixed[0]]
    links.remove(KEYS[0])
    assert r.receive_groups([mixed[1]], 0.0) == [] and r.stats["unknown_source"] == 1


def test_a_changed_quoted_price_or_an_expiring_advert_fetches_the_advert_again_bounded(tmp_path):
    from tunnelgate.daemon.gateways import ADVERT_REFETCH_S, ADVERT_RENEW_S
    from tunnelgate.protocol.advert import Advert
    fetched = []
    m, *_ = make(tmp_path, fetched=fetched)
    up_with_prices(m, [500, 600, 800], 0.0)
    for key in KEYS:
        m.gateways[key].sign_key = bytes(32)            # verified by its handshake
    assert fetched == []                                # first prices: nothing changed
    m.tick(3.0, 1003.0)
    answer(m, [500, 700, 800], 3.0)                     # gw2 changed its price
    assert fetched == [KEYS[1]]
    m.tick(6.0, 1006.0)
    answer(m, [500, 650, 800], 6.0)                     # again, within ADVERT_REFETCH_S: not asked
    assert fetched == [KEYS[1]]
    m.tick(6.0 + ADVERT_REFETCH_S, 1006.0 + ADVERT_REFETCH_S)
    answer(m, [500, 600, 800], 6.0 + ADVERT_REFETCH_S)
    assert fetched == [KEYS[1]] * 2
    gw3 = m.gateways[KEYS[2]]
    gw3.advert = Advert(KEYS[2], bytes(32), ("198.18.1.13:51900",), 800, expires=int(1039 + ADVERT_RENEW_S + 1))
    m.tick(40.0, 1039.0)                                # expires in more than ADVERT_RENEW_S: kept
    answer(m, [500, 600, 800], 40.0)
    assert fetched == [KEYS[1]] * 2
    m.tick(41.0, 1041.0)
    assert fetched == [KEYS[1]] * 2 + [KEYS[2]]
    m.tick(42.0, 1042.0)                                # asked: not again within ADVERT_REFETCH_S
    assert fetched == [KEYS[1]] * 2 + [KEYS[2]]


def test_a_no_deal_for_a_destination_moves_it_to_another_gateway_until_the_back_off_ends(tmp_path):
    # a relay whose upstream is gone says NO_DEAL "no upstream for D": the destination goes to
    # the next gateway at once, with the relay's reason; after the back-off the relay is
    # offered again, under the same switch margin as any price
    m, links, events, quotes, _ = make(tmp_path)
    up_with_prices(m, [500, 600, 800], 0.0)
    m.tick(3.5, 1003.5)
    dest = "198.18.2.2/32"
    m.on_event(E.Accepted(E.BUYER, KEYS[0], "c1", dest, ""), 1003.6)
    m.tick(3.7, 1003.7)
    assert m.chooser.current[dest] == KEYS[0]
    m.on_event(E.NoDeal(E.BUYER, KEYS[0], None, dest, "no upstream for 198.18.2.2/32: upstream gateway gone",
                        retry_after_s=60), 1004.0)
    assert m.chooser.current[dest] == KEYS[1]              # at once, not at the next tick
    assert links.router.lookup(bytes([198, 18, 2, 2])).peer == KEYS[1]
    moved = [e for e in events if type(e) is E.DestinationMoved and e.destination == dest]
    assert "no deal: no upstream for" in moved[-1].reason, moved[-1]
    assert links.router.lookup(bytes(4)).peer == KEYS[0]   # the rest stays with the cheapest
    m.tick(30.0, 1030.0)
    assert m.chooser.current[dest] == KEYS[1]              # within the back-off: stays
    quotes.clear()
    m.tick(64.5, 1064.5)
    # after it the relay is offered again only once a QUOTE says it would sell D: choosing
    # asked one; the relay still has no upstream and says so: refused again for its retry
    assert (KEYS[0], dest) in quotes
    assert {o.gateway: o.price for o in m.offers(dest)}[KEYS[0]] is None
    gw = m.gateways[KEYS[0]]
    while gw.probes:
        m.on_quote(quote(KEYS[0], 500, retry_after_s=5, reason="no upstream for 198.18.2.2/32: none connected"),
                   64.6, 1064.6)
    quotes.clear()
    m.tick(66.0, 1066.0)
    assert quotes == [] and m.chooser.current[dest] == KEYS[1]     # within the new back-off
    m.tick(70.0, 1070.0)
    assert (KEYS[0], dest) in quotes                                 # over: asked again
    while gw.probes:
        m.on_quote(quote(KEYS[0], 500), 70.1, 1070.1)                # it would sell D again
    # offered again, but 500 is not 20 % below 600: no flapping back
    assert {o.gateway: o.price for o in m.offers(dest)}[KEYS[0]] == 500
    m.tick(70.2, 1070.2)
    assert m.chooser.current[dest] == KEYS[1]
