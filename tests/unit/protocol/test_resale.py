"""Resale: a relay buys upstream and sells downstream, sans-IO, over in-memory peers.

A chain of engines: client Buyer -- relay (Seller downstream + Buyer upstream + Resale) --
... -- gateway Seller; messages go through encode/decode, payments are confirmed at once."""


from tunnelgate import packet as pk
from tunnelgate.meter import DROP, FORWARD, HELD
from tunnelgate.money import BYTES_PER_KB, cost_msat, parse_price
from tunnelgate.protocol import events as E
from tunnelgate.protocol import messages as m
from tunnelgate.protocol.buyer import Buyer, ClientPolicy
from tunnelgate.protocol.pricer import PENDING, Offer, Unavailable
from tunnelgate.protocol.relay_pricer import RelayPricer
from tunnelgate.protocol.resale import Resale, ResalePolicy
from tunnelgate.protocol.seller import Pricing, Seller

CLIENT, R1, R2, GW = (bytes([i]) * 32 for i in (1, 0x11, 0x12, 0x21))
NOW = 1_000_000.0
D = "198.18.2.2"
DEST = D + "/32"
P0 = parse_price("0.4")


def ip4(dst: str, n: int = 100) -> bytes:
    return bytes([0x45, 0, n >> 8, n & 0xFF]) + bytes(12) + pk.addr_bytes(dst) + bytes(n - 20)


def policy(max_price="10", **kw):
    return ClientPolicy(max_price=parse_price(max_price), data_renewal_kb=0, time_renewal_s=0, **kw)


class Relay:
    def __init__(self, key, upstream, margin="0.25", floor=1, fee=0, max_price="10", contract_kb=1000,
                 resale_policy=ResalePolicy(buy_kb=1000, ahead_kb=100)):
        self.key = key
        self.upstream = upstream           # its upstream seller's key, or None: none connected
        self.buyer = Buyer(policy(max_price), own_key=key)
        self.resale = Resale(self.buyer, lambda _key: self.upstream, resale_policy)
        self.pricer = RelayPricer(self.resale, margin, floor, fee)
        self.seller = Seller(Pricing(default_price=floor, floor_price=floor, contract_kb=contract_kb),
                             pricer=self.pricer, own_key=key)
        self.resale.attach(self.seller)
        self.events = {"seller": [], "buyer": [], "resale": []}


class Net:
    """Delivers every message (encoded, decoded) until all is quiet; pays at once."""

    def __init__(self, client: Buyer, nodes: dict, now: float = NOW):
        self.client, self.nodes, self.now = client, nodes, now
        self.client_events = []

    def sellers(self):
        for k, n in self.nodes.items():
            yield k, (n.seller if isinstance(n, Relay) else n)

    def buyers(self):
        yield CLIENT, self.client
        for k, n in self.nodes.items():
            if isinstance(n, Relay):
                yield k, n.buyer

    def seller_of(self, key):
        n = self.nodes[key]
        return n.seller if isinstance(n, Relay) else n

    def buyer_of(self, key):
        return self.client if key == CLIENT else self.nodes[key].buyer

    def run(self, rounds: int = 50):
        for _ in range(rounds):
            moved = False
            for key, s in self.sellers():
                for peer, msg in s.take_outgoing():
                    moved = True
                    self.buyer_of(peer).on_message(key, m.decode(m.encode(msg)), self.now)
            for key, b in self.buyers():
                for gw, msg in b.take_outgoing():
                    moved = True
                    self.seller_of(gw).on_message(key, m.decode(m.encode(msg)), self.now)
            for key, s in self.sellers():
                evs = s.take_events()
                for ev in evs:
                    if type(ev) is E.PaymentReceived:
                        s.payment_confirmed(ev.contract_id, self.now, counterpart=ev.counterpart)
                        moved = True
                if isinstance(self.nodes[key], Relay):
                    r = self.nodes[key]
                    bevs = r.buyer.take_events()
                    self._pay(key, r.buyer, bevs)
                    r.events["seller"] += evs
                    r.events["buyer"] += bevs
                    r.resale.on_events(evs, bevs, self.now)
                    r.resale.poll(self.now)
                    r.events["resale"] += r.resale.take_events()
                    moved = moved or bool(evs or bevs)
            cevs = self.client.take_events()
            self._pay(CLIENT, self.client, cevs)
            self.client_events += cevs
            if not moved and not cevs:
                return
        raise AssertionError("the chain did not settle")

    def _pay(self, key, buyer, events):
        for ev in events:
            if type(ev) is E.PaymentDue:
                buyer.paid(ev.counterpart, ev.contract_id, "dummy", f"proof-{key.hex()[:4]}-{ev.contract_id}")


def gateway(price=P0, floor=None, contract_kb=1000):
    return Seller(Pricing(default_price=price, floor_price=price if floor is None else floor,
                          contract_kb=contract_kb), own_key=GW)


def first_packet(net, relay_key, n=100):
    return net.seller_of(relay_key).outbound(CLIENT, D, n, ip4(D, n), net.now)


def up(price, margin=(1, 4)):
    num, den = margin
    return -(-price * (den + num) // den)


def test_relay_pricer_marks_up_exactly_never_below_floor_never_free():
    class Up:
        def __init__(self, a):
            self.a = a

        def offer(self, key, want_kb=0):
            return self.a

        def peek(self, key):
            return self.a

    chain = ((GW, 3),)
    p = RelayPricer(Up(Offer(3, chain)), "0.25", floor=1)
    o = p.offer(b"k")
    assert o == Offer(4, chain)                     # 3 × 1.25 = 3.75, rounded up
    assert RelayPricer(Up(Offer(3, chain, 70)), "0.25").offer(b"k") == Offer(4, chain, 70)   # the quota left
    assert RelayPricer(Up(Offer(400_000, chain)), "0.25", floor=1, fee=7).offer(b"k").price == 500_007
    assert RelayPricer(Up(Offer(400_000, chain)), "0.25", floor=600_000).offer(b"k").price == 600_000
    assert RelayPricer(Up(Offer(0, chain)), "0", floor=0).offer(b"k").price == 1
    assert RelayPricer(Up(PENDING), "0.25", floor=9).offer(b"k") is PENDING
    assert RelayPricer(Up(PENDING), "0.25", floor=9).price(b"k") == 9
    assert RelayPricer(Up(Unavailable("x")), "0.25").offer(b"k") == Unavailable("x")


def test_three_hop_chain_each_price_the_previous_plus_margin():
    """client -- relay1 -- relay2 -- gateway: the first packet buys all the way up first."""
    net = Net(Buyer(policy(), own_key=CLIENT), {R1: Relay(R1, R2), R2: Relay(R2, GW), GW: gateway()})
    assert first_packet(net, R1) == HELD
    net.run()
    p1, p2 = up(P0), up(up(P0))
    [c] = net.client.contract_list()
    assert c.price == p2 and c.terms.chain == ((GW, P0), (R2, p1), (R1, p2))
    assert [h["price_per_kb"] for h in net.client.contracts(NOW)[0]["chain"]] == [P0, p1, p2]
    # the held first packet went out once the client accepted
    assert net.nodes[R1].seller.take_released() == [(CLIENT, ip4(D))]
    # each relay bought before it sold: its upstream contract is the chain minus itself
    u1s, u2s = net.nodes[R1].buyer.contract_list(), net.nodes[R2].buyer.contract_list()
    assert {u.terms.chain for u in u1s} == {((GW, P0), (R2, p1))}
    assert {u.terms.chain for u in u2s} == {((GW, P0),)}
    # never sold more than bought; all of it sold, so each relay bought more ahead
    u1 = u1s[0]
    assert c.limit_kb == u1.limit_kb and len(u1s) == 2
    assert sum(u.limit_kb for u in u1s) <= sum(u.limit_kb for u in u2s)
    assert [e.kind for e in net.nodes[R1].events["resale"]] == ["upstream_renewal_due"] * 2
    assert any(type(e) is E.UpstreamWait for e in net.nodes[R1].events["seller"])
    # money: each relay's margin is what it sold less what it bought
    money = net.nodes[R1].resale.status(NOW)["money"]["destinations"][DEST]
    assert money["revenue_msat"] == c.cost_msat and money["cost_msat"] == sum(u.cost_msat for u in u1s)
    assert money["margin_msat"] == money["revenue_msat"] - money["cost_msat"]
    assert c.cost_msat == up(u1.cost_msat)            # what it sold: what it bought × 1.25


def test_a_relay_quotes_its_chain_once_it_has_bought():
    net = Net(Buyer(policy(), own_key=CLIENT), {R1: Relay(R1, GW), GW: gateway()})
    net.client.request_quote(R1, DEST)
    net.run()
    [q] = [e for e in net.client_events if type(e) is E.Quote]
    assert "not known yet" in q.reason and q.chain == ()
    assert net.nodes[R1].buyer.contract_list() == []           # a quote buys nothing
    first_packet(net, R1)
    net.run()
    net.client.request_quote(R1, DEST)
    net.run()
    [_, q] = [e for e in net.client_events if type(e) is E.Quote]
    assert q.reason == "" and q.price == up(P0) and len(q.chain) == 2 and q.acceptable


def test_a_quote_says_when_a_relay_without_upstream_would_sell_again():
    # a QUOTE tells a client's market whether a REQUEST would get NO_DEAL now (it keeps the
    # destination away until then), not only a price: "not known yet" sells, "no upstream"
    # does not
    relay = Relay(R1, None)
    net = Net(Buyer(policy(), own_key=CLIENT), {R1: relay, GW: gateway()})
    net.client.request_quote(R1, DEST)
    net.run()
    [q] = [e for e in net.client_events if type(e) is E.Quote]
    assert q.reason.startswith(f"no upstream for {DEST}") and q.retry_after_s == 5
    relay.upstream = GW
    net.client.request_quote(R1, DEST)
    net.run()
    [_, q] = [e for e in net.client_events if type(e) is E.Quote]
    assert "not known yet" in q.reason and q.retry_after_s == 0
    # a flow in its no-deal back-off at the seller (5 s from NOW): even with the upstream
    # back, the quote says how long is left
    relay.upstream = None
    first_packet(net, R1)
    net.run()
    relay.upstream = GW
    net.now = NOW + 2
    net.client.request_quote(R1, DEST)
    net.run()
    q = [e for e in net.client_events if type(e) is E.Quote][-1]
    assert q.retry_after_s == 4, q


def test_counter_offer_below_upstream_cost_is_met_at_cost():
    # the client pays at most 0.45 and counters 0.8 x 0.5 = 0.4... below the relay's cost
    client = Buyer(policy("0.41", counter_fraction="0.5"), own_key=CLIENT)
    net = Net(client, {R1: Relay(R1, GW), GW: gateway()})
    first_packet(net, R1)
    net.run()
    rejected = [e for e in net.client_events if type(e) is E.Rejected]
    assert rejected[0].counter_price == up(P0) // 2 < P0
    proposals = [e for e in net.nodes[R1].events["seller"] if type(e) is E.Proposed]
    assert [p.price for p in proposals][:2] == [up(P0), P0]         # then at cost, not below
    [c] = client.contract_list()                                 # 0.4 is within the client's 0.41
    assert c.price == P0 and c.terms.chain == ((GW, P0), (R1, P0))


def test_counter_offer_above_cost_is_met():
    client2 = Buyer(policy("0.39"), own_key=CLIENT)
    net = Net(client2, {R1: Relay(R1, GW, margin="0.5"), GW: gateway(price=parse_price("0.3"))})
    first_packet(net, R1)
    net.run()
    [c] = client2.contract_list()
    assert c.price == (parse_price("0.45") * 8) // 10        # 0.36: above the 0.3 cost
    assert c.terms.chain[-1] == (R1, c.price)


def test_no_upstream_gateway_is_a_no_deal_with_the_reason_not_silence():
    net = Net(Buyer(policy(), own_key=CLIENT), {R1: Relay(R1, None)})
    assert first_packet(net, R1) == DROP
    net.run()
    [nd] = [e for e in net.client_events if type(e) is E.NoDeal]
    assert nd.reason.startswith(f"no upstream for {DEST}") and nd.retry_after_s > 0


def test_no_upstream_keeps_the_client_away_for_seconds_not_the_no_deal_back_off():
    # an upstream that is not connected now may be back in seconds: the client is told to ask
    # again after no_upstream_backoff_s (5 s), not no_deal_backoff_s (60 s), and is sold then
    relay = Relay(R1, None)
    net = Net(Buyer(policy(), own_key=CLIENT), {R1: relay, GW: gateway()})
    assert first_packet(net, R1) == DROP
    net.run()
    [nd] = [e for e in net.client_events if type(e) is E.NoDeal]
    assert nd.retry_after_s == Pricing(1, 1).no_upstream_backoff_s == 5
    relay.upstream = GW                                     # the upstream is back
    net.now = NOW + 4
    assert first_packet(net, R1) == DROP                    # still within the back-off
    net.now = NOW + 5
    assert first_packet(net, R1) == HELD                    # asks the upstream again
    net.run()
    [c] = [c for c in net.client.contract_list() if c.state.value != "no_deal"]
    assert c.terms.chain[0][0] == GW and c.price == up(P0)


def test_a_relay_passes_on_its_upstreams_back_off_not_a_shorter_one():
    # the upstream said no deal for 60 s: asking the relay sooner would only meet it again
    relay = Relay(R1, GW, max_price="0.3")
    net = Net(Buyer(policy(), own_key=CLIENT), {R1: relay, GW: gateway()})
    first_packet(net, R1)
    net.run()
    [nd] = [e for e in net.client_events if type(e) is E.NoDeal]
    assert nd.retry_after_s == Pricing(1, 1).no_deal_backoff_s == 60
    net.now = NOW + 59
    relay.buyer.poll(net.now)
    relay.seller.poll(net.now)
    assert first_packet(net, R1) == DROP
    net.now = NOW + 60
    relay.buyer.poll(net.now)                               # the daemon's tick
    relay.seller.poll(net.now)
    net.client_events.clear()
    assert first_packet(net, R1) == HELD                    # both back-offs over: asked again
    net.run()
    [nd] = [e for e in net.client_events if type(e) is E.NoDeal]
    assert nd.retry_after_s == 60 and "floor" in nd.reason


def test_upstream_no_deal_reaches_the_client_as_no_upstream():
    # the gateway asks more than the relay will pay upstream, and does not come down
    relay = Relay(R1, GW, max_price="0.3")
    net = Net(Buyer(policy(), own_key=CLIENT), {R1: relay, GW: gateway()})
    assert first_packet(net, R1) == HELD
    net.run()
    [nd] = [e for e in net.client_events if type(e) is E.NoDeal]
    assert nd.reason.startswith(f"no upstream for {DEST}:") and "floor" in nd.reason
    assert relay.seller.status(NOW)["peers"][CLIENT.hex()]["held_packets"] == 0
    assert relay.seller.status(NOW)["peers"][CLIENT.hex()]["open_proposals"] == 0


def test_an_upstream_chain_that_does_not_add_up_fails_downstream_at_once():
    # the relay's buyer rejects an upstream proposal whose chain does not name its seller
    # (no deal at any price: a REJECT without a counter-offer); the waiting client hears it
    # at once, not after the buy's time-out
    relay = Relay(R1, GW)
    liar = Seller(Pricing(default_price=P0, floor_price=P0, contract_kb=1000), own_key=R2)
    net = Net(Buyer(policy(), own_key=CLIENT), {R1: relay, GW: liar})
    assert first_packet(net, R1) == HELD
    net.run()
    [nd] = [e for e in net.client_events if type(e) is E.NoDeal]
    assert nd.reason.startswith(f"no upstream for {DEST}: cost chain ends at"), nd.reason
    assert net.now == NOW                   # no time passed: not the wait_s time-out
    assert relay.seller.status(NOW)["peers"][CLIENT.hex()]["held_packets"] == 0


def test_a_bigger_contract_asked_downstream_is_bought_upstream_in_one_go():
    # a fast flow asks for bigger contracts: the relay buys that much upstream at once, so
    # contracts grow through a relay as they do at a gateway; what it has left it sells now
    relay = Relay(R1, GW)                                   # contract_kb 1000
    relay.buyer.book(GW).sized_requests = True              # GW's handshake listed "sized"
    net = Net(Buyer(policy(), own_key=CLIENT), {R1: relay, GW: gateway()})
    key = pk.addr_bytes(D)
    assert relay.pricer.offer(key, 8000) is PENDING
    relay.resale.poll(NOW)
    [req] = [msg for _gw, msg in relay.buyer.take_outgoing() if type(msg) is m.Request]
    assert req.limit_kb >= 8000, req
    net.nodes[GW].on_message(R1, m.decode(m.encode(req)), NOW)
    net.run()
    offer = relay.pricer.offer(key, 8000)
    assert offer.limit_kb >= 8000, offer                    # in stock: the whole contract
    # only 500 KB left in stock when 8000 are asked: those now, the rest bought for the next
    relay2 = Relay(R1, GW)
    relay2.buyer.book(GW).sized_requests = True
    net2 = Net(Buyer(policy(), own_key=CLIENT), {R1: relay2, GW: gateway()})
    first_packet(net2, R1)
    net2.run()
    left = relay2.resale.status(NOW)["destinations"][DEST]
    have_kb = (left["upstream_bytes_left"] - left["sold_bytes_left"]) // BYTES_PER_KB
    assert 0 < have_kb < 8000
    assert relay2.pricer.offer(key, 8000).limit_kb == have_kb
    assert relay2.resale.next_deadline() == 0.0             # a buy is wanted now
    relay2.resale.poll(NOW)
    [req2] = [msg for _gw, msg in relay2.buyer.take_outgoing() if type(msg) is m.Request]
    assert req2.limit_kb >= 8000 - have_kb, req2


def test_unanswered_upstream_buy_fails_after_the_wait():
    relay = Relay(R1, GW)
    net = Net(Buyer(policy(), own_key=CLIENT), {R1: relay, GW: gateway()})
    first_packet(net, R1)
    relay.resale.poll(NOW)
    assert [type(msg) for _, msg in relay.buyer.take_outgoing()] == [m.Request]   # lost on the way
    assert relay.resale.next_deadline() == NOW + 10
    net.now = NOW + 10
    net.run()
    [nd] = [e for e in net.client_events if type(e) is E.NoDeal]
    assert "did not answer within 10 s" in nd.reason


def _sold(**kw):
    net = Net(Buyer(policy(), own_key=CLIENT), {R1: Relay(R1, GW, **kw), GW: gateway(contract_kb=1000)})
    first_packet(net, R1)
    net.run()
    return net, net.nodes[R1]


def test_upstream_revoked_stops_what_was_sold_with_the_reason_and_refunds_unforwarded_bytes():
    net, relay = _sold(contract_kb=500)
    [c] = net.client.contract_list()
    assert c.paid
    for _ in range(100):            # 100 KB (and the first packet) through the relay, both sides metered
        assert relay.seller.outbound(CLIENT, D, 1000, ip4(D, 1000), NOW) == FORWARD
        relay.buyer.outbound(pk.addr_bytes(D), 1000, NOW)
    gw = net.nodes[GW]
    gw.stop_destination(DEST, "maintenance", NOW)   # the gateway revokes the relay's contract
    net.run()
    [rev] = [e for e in net.client_events if type(e) is E.Revoked]
    assert rev.contract_id == c.contract_id and "upstream contract revoked: maintenance" in rev.reason
    [lost] = [e for e in relay.events["resale"] if type(e) is E.UpstreamLost]
    assert lost.stopped == (c.contract_id,)
    [ref] = [e for e in relay.events["seller"] if type(e) is E.Refunded]
    assert ref.amount_msat == c.cost_msat - cost_msat(c.price, 101) > 0 and ref.used == 100_100 and ref.counterpart == CLIENT
    money = relay.resale.status(NOW)["money"]["destinations"][DEST]
    assert money["refunds_msat"] == ref.amount_msat and money["revenue_msat"] == c.cost_msat - ref.amount_msat
    assert relay.seller.outbound(CLIENT, D, 100, ip4(D), NOW) != FORWARD


def test_upstream_gateway_gone_stops_downstream():
    net, relay = _sold()
    [c] = net.client.contract_list()
    relay.upstream = None
    relay.resale.upstream_gone(GW, "session lost", NOW)
    net.run()
    [rev] = [e for e in net.client_events if type(e) is E.Revoked]
    assert rev.contract_id == c.contract_id and "upstream gateway gone: session lost" in rev.reason


def test_sold_contracts_wait_for_the_upstream_to_connect_before_they_are_stopped():
    # a relay restarted: what it sold and bought is back from disk, its upstream handshake
    # not done yet at the first poll; what was sold is kept for wait_s, then stopped
    net, relay = _sold()
    [c] = net.client.contract_list()
    relay.upstream = None
    wait = relay.resale.policy.wait_s
    for t in (0.0, 1.0, wait - 0.5):
        relay.resale.poll(NOW + t)
        net.run()
        assert not [e for e in net.client_events if type(e) is E.Revoked], t
    assert relay.resale.next_deadline() == NOW + wait
    relay.resale.poll(NOW + wait)
    net.run()
    [rev] = [e for e in net.client_events if type(e) is E.Revoked]
    assert rev.contract_id == c.contract_id and "no upstream gateway connected" in rev.reason


def test_the_upstream_connecting_in_time_stops_nothing():
    net, relay = _sold()
    relay.upstream = None
    relay.resale.poll(NOW)
    relay.upstream = GW                     # the handshake is done
    relay.resale.poll(NOW + relay.resale.policy.wait_s + 1)
    net.run()
    assert not [e for e in net.client_events if type(e) is E.Revoked]


def test_upstream_exhausted_with_a_renewal_on_its_way_stops_nothing():
    net, relay = _sold(contract_kb=700)
    [u] = relay.buyer.contract_list()
    # the relay sold 700 of 1000 KB: 300 left beyond, no renewal yet
    assert relay.resale.status(NOW)["destinations"][DEST]["upstream_bytes_left"] == 1000 * BYTES_PER_KB
    relay.resale.poll(NOW)
    assert not relay.buyer.take_outgoing()
    # a second client buys: the offer is capped at what is left upstream
    CL2 = b"\x02" * 32
    c2 = Buyer(policy(), own_key=CL2)
    assert relay.seller.outbound(CL2, D, 100, ip4(D), NOW) == HELD
    [(peer, p2)] = [x for x in relay.seller.take_outgoing()]
    assert peer == CL2 and p2.limit_kb == 300
    c2.on_message(R1, p2, NOW)
    relay.seller.on_message(CL2, c2.take_outgoing()[0][1], NOW)
    relay.resale.on_events(relay.seller.take_events(), [], NOW)
    # sold all 1000 KB (200 bytes used since): less than ahead_kb beyond it, so the relay buys more upstream now
    relay.resale.poll(NOW)
    [(gw, req)] = relay.buyer.take_outgoing()
    assert gw == GW and isinstance(req, m.Request)
    [due] = relay.resale.take_events()
    assert type(due) is E.UpstreamRenewalDue and due.sold_bytes == 1_000_000 - 200 and due.supply_bytes == 1_000_000
    net.seller_of(GW).on_message(R1, req, NOW)
    net.run()
    assert len(relay.buyer.contract_list()) == 2                 # queued behind the first
    relay.buyer.outbound(pk.addr_bytes(D), 1000 * BYTES_PER_KB, NOW)     # the first is used up
    assert relay.buyer.outbound(pk.addr_bytes(D), 1, NOW)        # the next takes over
    net.run()
    assert not [e for e in net.client_events if type(e) is E.Revoked]


def test_upstream_expiring_soon_is_renewed_before_it_does():
    net, relay = _sold(contract_kb=100)
    relay.resale.poll(NOW)
    assert not relay.buyer.take_outgoing()
    [u] = relay.buyer.contract_list()
    relay.resale.poll(u.expires_at - 29)          # within ahead_s (30 s) of its end
    [(_, req)] = relay.buyer.take_outgoing()
    assert isinstance(req, m.Request)


def test_a_waiting_flow_counts_as_an_open_proposal_of_its_peer():
    relay = Relay(R1, GW)
    relay.seller.pricing = relay.seller.pricing.__class__(**{**relay.seller.pricing.__dict__,
                                                              "max_pending_proposals": 2})
    for i in range(4):
        relay.seller.outbound(CLIENT, f"198.18.3.{i}", 100, ip4(f"198.18.3.{i}"), NOW)
    assert relay.seller.status(NOW)["peers"][CLIENT.hex()]["open_proposals"] == 2
    relay.resale.poll(NOW)
    assert len(relay.buyer.take_outgoing()) == 2          # two upstream buys, not four


def test_upstream_used_up_with_nothing_behind_it_stops_downstream():
    net, relay = _sold(contract_kb=100)
    [c] = net.client.contract_list()
    relay.buyer.outbound(pk.addr_bytes(D), 1000 * BYTES_PER_KB, NOW)    # the upstream is used up
    relay.buyer.outbound(pk.addr_bytes(D), 1, NOW)
    net.run()
    [rev] = [e for e in net.client_events if type(e) is E.Revoked]
    assert rev.contract_id == c.contract_id and rev.reason.startswith("upstream contract exhausted")


def test_a_restarted_relay_knows_what_it_sold():
    net, relay = _sold(contract_kb=100)
    [c] = net.client.contract_list()
    # the daemon's order: a new Resale, the Seller pricing through it restored from its
    # snapshot (its flows asking the pricer for list prices), then attached (a relay killed
    # with flows on disk failed to start here: the pricer asked a Resale with no seller)
    again = Resale(relay.buyer, lambda _key: GW, relay.resale.policy)
    seller = Seller(relay.seller.pricing, pricer=RelayPricer(again, "0.25", 1, 0), own_key=R1)
    seller.restore(relay.seller.snapshot(), NOW)
    again.attach(seller)
    assert list(again.dests[DEST].sold) == [(CLIENT, c.contract_id)]
    again.upstream_gone(GW, "restarted without it", NOW)
    [lost] = again.take_events()
    assert lost.stopped == (c.contract_id,)


def test_an_upstream_refusal_after_an_unanswered_buy_fails_downstream_at_once():
    # An upstream buy the gateway never answers (lost, or ignored while the relay's contracts
    # queue there) must not hide the refusal that follows: the gateway raises its price above
    # the relay's max_price, the upstream contract is used up, and the client waiting for its
    # next contract is told why at once, not after the buy's 10 s wait.
    net, relay = _sold(contract_kb=100, max_price="0.45")
    gw = net.seller_of(GW)
    relay.resale.dests[DEST].wanted = 1000
    relay.resale.poll(NOW)
    assert [type(msg) for _, msg in relay.buyer.take_outgoing()] == [m.Request]     # lost on the way
    gw.set_prices(default_price=parse_price("5"), floor_price=parse_price("5"))
    relay.buyer.outbound(pk.addr_bytes(D), 1000 * BYTES_PER_KB, NOW)    # the upstream is used up
    relay.buyer.outbound(pk.addr_bytes(D), 1, NOW)
    for _ in range(101):            # the client's 100 KB, then a packet for its next contract
        relay.seller.outbound(CLIENT, D, 1000, ip4(D, 1000), NOW)
    net.run()
    refused = [e for e in net.client_events if type(e) in (E.NoDeal, E.Revoked)]
    assert refused, net.client_events
    assert all(e.reason.startswith(f"no upstream for {DEST}: ") and "floor" in e.reason
               for e in refused), refused
    assert not [e for e in net.client_events if "did not answer" in (e.reason or "")]
