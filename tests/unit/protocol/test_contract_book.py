"""The shared lifecycle's shape: one buyer with several sellers and one seller with several
buyers, each counterpart in its own book (its contracts, its credit, its events), books
indexed so that no lookup walks the history, typed events naming side and counterpart."""

import dataclasses
from collections import deque

import pytest

from tunnelgate import packet as pk
from tunnelgate.meter import FORWARD
from tunnelgate.money import parse_price
from tunnelgate.protocol import events as E
from tunnelgate.protocol import messages as m
from tunnelgate.protocol.book import Book, Tombstones
from tunnelgate.protocol.buyer import Buyer, ClientPolicy
from tunnelgate.protocol.credit import MemoryCredit
from tunnelgate.protocol.seller import Pricing, Seller
from tunnelgate.protocol.terms import Terms

NOW = 1_000_000.0


def pricing(price="0.5", **kw):
    d = dict(default_price=parse_price(price), floor_price=parse_price(price), contract_kb=100,
             contract_time_s=600, grace_time_s=5, grace_kb=50, payment_methods=("dummy",), account="acct")
    d.update(kw)
    return Pricing(**d)


def ip4(dst, total=1000, src="100.64.0.2"):
    import struct
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0,
                       pk.addr_bytes(src), pk.addr_bytes(dst)) + bytes(total - 20)


class Market:
    """Buyers and sellers by public key, their messages delivered at once (in memory)."""

    def __init__(self, sellers: dict[bytes, Seller], buyers: dict[bytes, Buyer], pay=True):
        self.sellers, self.buyers, self.pay = sellers, buyers, pay
        self.now = NOW
        self.sev: dict[bytes, list] = {k: [] for k in sellers}
        self.bev: dict[bytes, list] = {k: [] for k in buyers}

    def pump(self):
        for _ in range(20):
            moved = False
            for bk, b in self.buyers.items():
                for sk, msg in b.take_outgoing():
                    self.sellers[sk].on_message(bk, msg, self.now)
                    moved = True
                for e in b.take_events():
                    self.bev[bk].append(e)
                    if type(e) is E.PaymentDue and self.pay:
                        b.paid(e.counterpart, e.contract_id, "dummy", "proof-" + e.contract_id, e.pay_msat)
                        moved = True
            for sk, s in self.sellers.items():
                for bk, msg in s.take_outgoing():
                    self.buyers[bk].on_message(sk, msg, self.now)
                    moved = True
                s.take_released()
                for e in s.take_events():
                    self.sev[sk].append(e)
                    if type(e) is E.PaymentReceived:
                        left = s.credit.add(e.counterpart, e.amount_msat - e.cost_msat)
                        s.payment_confirmed(e.contract_id, self.now, credit_msat=left, counterpart=e.counterpart)
                        moved = True
            if not moved:
                return

    def send(self, bk: bytes, sk: bytes, dst: str, size=1000) -> int:
        p = ip4(dst, size)
        d, length = pk.dst_and_length(p)
        self.buyers[bk].outbound(d, length, self.now)
        r = self.sellers[sk].outbound(bk, d, length, p, self.now)
        self.pump()
        return r

    def step(self, dt):
        self.now += dt
        for s in self.sellers.values():
            s.poll(self.now)
        for b in self.buyers.values():
            b.poll(self.now)
        self.pump()


BUYER = b"B" * 32
SELLERS = {b"\x01" * 32: ("0.3", "198.18.1.1"), b"\x02" * 32: ("0.5", "198.18.2.2"),
           b"\x03" * 32: ("0.7", "198.18.3.3")}


def test_one_buyer_three_sellers_keeps_prices_credit_and_events_apart():
    buyer = Buyer(ClientPolicy(max_price=parse_price("1"), data_renewal_kb=0, time_renewal_s=0))
    buyer.prepay_msat = 100
    mk = Market({k: Seller(pricing(price), credit=MemoryCredit()) for k, (price, _) in SELLERS.items()},
                {BUYER: buyer})
    for k, (_, dst) in SELLERS.items():
        mk.send(BUYER, k, dst)                                # held: a proposal goes out
        mk.step(0.01)
        assert mk.send(BUYER, k, dst) == FORWARD
    assert set(buyer.books) == set(SELLERS)
    for k, (price, dst) in SELLERS.items():
        [c] = buyer.books[k].live.values()
        assert c.peer == k and c.price == parse_price(price) and c.destination == dst + "/32" and c.paid
        # the prepaid surplus is credit at that seller only, as that seller keeps it
        assert buyer.book(k).credit_msat == mk.sellers[k].credit.balance(BUYER) == 100 - c.cost_msat
        dues = [e for e in mk.bev[BUYER] if type(e) is E.PaymentDue and e.counterpart == k]
        assert [e.contract_id for e in dues] == [c.contract_id]
        assert all(e.side == E.BUYER for e in mk.bev[BUYER])
        assert all(e.side == E.SELLER and e.counterpart == BUYER for e in mk.sev[k] if e.contract_id)
    assert len({buyer.book(k).credit_msat for k in SELLERS}) == 3       # three prices, three credits
    assert buyer.credit_msat == sum(buyer.book(k).credit_msat for k in SELLERS)
    # credit at one seller does not pay another: plenty at the first, none at the third
    first, third = list(SELLERS)[0], list(SELLERS)[2]
    buyer.book(first).credit_msat = 10**9
    buyer.book(third).credit_msat = 0
    buyer.on_message(third, m.Propose("x9", "198.18.3.4/32", parse_price("0.7"), 100, 600, ("dummy",),
                                      "acct", 1, 5, 50), mk.now)
    [(to, accept)] = buyer.take_outgoing()
    assert to == third and isinstance(accept, m.Accept) and accept.credit is None
    [due] = [e for e in buyer.take_events() if type(e) is E.PaymentDue]
    assert due.counterpart == third and buyer.book(first).credit_msat == 10**9


def test_one_seller_two_buyers_each_in_its_own_book():
    s = Seller(pricing(), credit=MemoryCredit())
    good, bad = b"G" * 32, b"N" * 32
    policy = ClientPolicy(max_price=parse_price("1"), data_renewal_kb=0, time_renewal_s=0)
    gw = b"\x09" * 32
    mk = Market({gw: s}, {good: Buyer(policy), bad: Buyer(policy)})
    mk.send(good, gw, "198.18.2.2")
    mk.pay = False                      # the second buyer accepts but never pays
    mk.send(bad, gw, "198.18.2.2")
    assert set(s.books) == {good, bad}
    assert [c.peer for c in s.books[good].live.values()] == [good]
    assert [c.peer for c in s.books[bad].live.values()] == [bad]
    assert s.books[good].live.keys().isdisjoint(s.books[bad].live.keys())
    assert len(s.books[bad].unpaid) == 1 and not s.books[good].unpaid
    mk.step(6)                          # the unpaid one's grace ends: that buyer alone loses grace
    st = s.status(mk.now)["peers"]
    assert st[bad.hex()]["grace"] is False and st[good.hex()]["grace"] is True
    revoked = [e for e in mk.sev[gw] if type(e) is E.Revoked]
    assert [e.counterpart for e in revoked] == [bad]
    assert mk.send(good, gw, "198.18.2.2") == FORWARD


class CountingDeque(deque):
    iterations = 0

    def __iter__(self):
        CountingDeque.iterations += 1
        return super().__iter__()


def test_lookups_never_walk_the_history():
    """Thousands of ended contracts: a late PAY, a USAGE request, a payment confirmed, the
    buyer's unpaid list and the books' sizes do not depend on them (the history is only
    walked for status with history and for a full save)."""
    s = Seller(pricing(contract_kb=1, grace_kb=1), credit=MemoryCredit())
    s.tombstones._order = CountingDeque()
    peer = b"P" * 32
    for i in range(3000):
        dst = f"198.18.{i >> 8}.{i & 255}"
        s.outbound(peer, dst, 100, ip4(dst, 100), NOW)
        for _, msg in s.take_outgoing():
            if isinstance(msg, m.Propose):
                s.on_message(peer, m.Accept(msg.contract_id), NOW)
                s.payment_confirmed(msg.contract_id, NOW, counterpart=peer)
    s.poll(NOW + 700)                   # all expire: tombstones, bounded
    s.take_outgoing()
    book = s.books[peer]
    assert not book.live and len(book.ended) <= s.tombstones.cap and not book.unpaid
    assert len(s.tombstones) <= s.tombstones.cap
    old = next(iter(book.ended))
    CountingDeque.iterations = 0
    s.on_message(peer, m.Pay(old, 1, "dummy", "p"), NOW + 701)        # paid already: PAID again
    s.on_message(peer, m.UsageRequest(old), NOW + 701)
    s.payment_confirmed(old, NOW + 701, counterpart=peer)
    s.poll(NOW + 702)
    out = [msg for _, msg in s.take_outgoing()]
    assert [type(x) for x in out] == [m.Paid, m.Usage]
    assert CountingDeque.iterations == 0
    assert s.next_deadline() is None or s.next_deadline() > NOW + 702


def test_book_indexes_and_next_deadline():
    ts = Tombstones(cap=4, trim=2)
    b = Book(b"k", ts)
    from tunnelgate.protocol.contract import Contract
    cs = [Contract(Terms(f"c{i}", "198.18.0.1/32", bytes(4), 32, 1, 1, 60), b"k") for i in range(6)]
    for c in cs:
        b.add(c)
    b.owe(cs[5])
    for c in cs[:5]:
        b.retire(c, NOW)
    assert set(b.live) == {"c5"} and b.find("c5") is cs[5] and b.find("c4") is cs[4]
    assert b.find("c0") is None and len(b.ended) <= 4          # the oldest tombstones went
    assert list(b.unpaid) == ["c5"]
    b.settle(cs[5])
    assert not b.unpaid
    assert b.next_deadline() is None
    assert b.at(NOW + 5, 1, 0, cs[5]) and not b.at(NOW + 9, 2, 0, cs[5]) and b.at(NOW + 1, 3, 0, cs[5])
    assert b.next_deadline() == NOW + 1
    assert [w for w, _, _ in b.due(NOW + 5, 10)] == [NOW + 1, NOW + 5] and b.next_deadline() == NOW + 9


def test_a_contract_retired_twice_is_one_tombstone():
    """Retired again (e.g. restored over a run that had ended it): one entry, shown once, the
    newer object; the trim counts it once and does not drop it for its first place."""
    from tunnelgate.protocol.contract import Contract
    ts = Tombstones(cap=3, trim=1)
    b = Book(b"k", ts)
    cs = [Contract(Terms(f"c{i}", "198.18.0.1/32", bytes(4), 32, 1, 1, 60), b"k") for i in range(4)]
    again = Contract(cs[0].terms, b"k")
    b.retire(cs[0], NOW)
    b.retire(again, NOW + 1)
    assert list(ts.contracts()) == [again] and len(ts) == 1 and b.find("c0") is again
    for c in cs[1:3]:
        b.retire(c, NOW + 2)
    assert [c.contract_id for c in ts.contracts()] == ["c0", "c1", "c2"] and len(ts) == 3
    b.retire(cs[3], NOW + 3)            # over the cap: the oldest (c0) goes, once
    assert [c.contract_id for c in ts.contracts()] == ["c1", "c2", "c3"] and b.find("c0") is None


def test_seller_next_deadline_is_its_earliest_timer():
    s = Seller(pricing(proposal_timeout_s=10))
    assert s.next_deadline() is None
    s.outbound(BUYER, "198.18.2.2", 100, ip4("198.18.2.2", 100), NOW)
    assert s.next_deadline() == NOW + 10
    s.poll(NOW + 9.9)
    assert not [e for e in s.take_events() if type(e) is E.Withdrawn]
    s.poll(NOW + 10)
    [w] = [e for e in s.take_events() if type(e) is E.Withdrawn]
    assert w.counterpart == BUYER and w.side == E.SELLER


def test_events_are_typed_frozen_and_say_side_and_counterpart():
    ev = E.PaymentDue(E.BUYER, b"k" * 32, "c1", "198.18.2.2/32", amount_msat=5, methods=("dummy",),
                      account="a", pay_msat=7)
    assert ev.kind == "payment_due" and ev.extras() == {"methods": ("dummy",), "account": "a", "pay_msat": 7}
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.pay_msat = 8
    assert not hasattr(ev, "__dict__")                       # slots: no per-event dict
    kinds = [cls.kind for cls in vars(E).values()
             if isinstance(cls, type) and issubclass(cls, E.ContractEvent) and cls.kind]
    assert len(kinds) == len(set(kinds)) == 31


def test_seller_prices_through_its_pricer():
    """A relay's pricer (an upstream quote plus a margin) in place of the static table."""
    class Margin:
        def __init__(self, upstream: dict[bytes, int], margin: int):
            self.upstream, self.margin = upstream, margin

        def price(self, key: bytes) -> int:
            return self.upstream.get(key, 0) and self.upstream[key] + self.margin

    dst = "198.18.2.2"
    s = Seller(pricing("0.5"), pricer=Margin({pk.addr_bytes(dst): 400_000}, 50_000))
    assert s.outbound(BUYER, dst, 100, ip4(dst, 100), NOW) != FORWARD
    [(_, prop)] = s.take_outgoing()
    assert isinstance(prop, m.Propose) and prop.price == 450_000
    assert s.outbound(BUYER, "198.18.9.9", 100, ip4("198.18.9.9", 100), NOW) == FORWARD   # 0: free
    s.set_prices(default_price=parse_price("0.9"))          # the configured price is not the pricer's
    assert s.books[BUYER].flows[pk.addr_bytes(dst)].list_price == 450_000


def test_buyer_reads_a_snapshot_from_before_books_as_its_one_gateways():
    gw = b"\x07" * 32
    b = Buyer(ClientPolicy(max_price=parse_price("1"), data_renewal_kb=0, time_renewal_s=0))
    b.on_message(gw, m.Propose("k1", "198.18.2.2/32", parse_price("0.5"), 100, 600, ("dummy",), "a", 1, 5, 50),
                 NOW)
    snap = b.snapshot()
    # version 1: no books, no peer on contracts or flows, one credit
    old = {"version": 1, "spent_total": snap["spent_total"], "spend": snap["spend"], "credit_msat": 70,
           "contracts": [{**d, "peer": ""} for d in snap["contracts"]], "owing": [],
           "flows": [{k: v for k, v in d.items() if k not in ("peer", "key", "plen")} for d in snap["flows"]]}
    again = Buyer(b.policy, legacy_counterpart=gw)
    again.restore(old, NOW + 1)
    assert set(again.books) == {gw} and again.book(gw).credit_msat == 70
    [c] = again.book(gw).live.values()
    assert c.peer == gw and again.books[gw].flows["198.18.2.2/32"].current is c
    [due] = [e for e in again.take_events() if type(e) is E.PaymentDue]
    assert due.counterpart == gw and again.unpaid() == [(gw, "k1")]
