"""Grace belongs to the peer and strangers share one budget (protocol/grace.py): a key that
accepts and never pays gets one grace however many destinations it opens, fresh keys get at
most the strangers' budget together, and payers are never held back by strangers."""
import struct

from tunnelgate import packet as pk
from tunnelgate.meter import FORWARD
from tunnelgate.money import BYTES_PER_KB, parse_price
from tunnelgate.protocol import events as E
from tunnelgate.protocol import messages as m
from tunnelgate.protocol.credit import MemoryCredit
from tunnelgate.protocol.grace import StrangersBudget, slice_bytes
from tunnelgate.protocol.seller import Pricing, Seller

NOW = 1_000_000.0
PKT = 1400


def pricing(**kw):
    d = dict(default_price=parse_price("0.5"), floor_price=parse_price("0.3"), contract_kb=1000,
             contract_time_s=600, grace_time_s=30, grace_kb=50, payment_methods=("dummy",), account="acct")
    d.update(kw)
    return Pricing(**d)


def key(i: int) -> bytes:
    return bytes([i + 1]) * 32


def dst(i: int) -> bytes:
    return bytes((198, 18, 2, 10 + i))


def ip4(d: bytes, total: int = PKT) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0,
                       pk.addr_bytes("100.64.0.2"), d) + bytes(total - 20)


class Market:
    """A seller and in-memory buyers: every one accepts every proposal; ``payers`` also pay
    (confirmed at once); the rest never pay.  Counts the bytes forwarded per peer, both ways
    (what the upstream would see, and what reaches the client)."""

    def __init__(self, gw: Seller, payers=()):
        self.gw, self.payers = gw, set(payers)
        self.forwarded: dict[bytes, int] = {}

    def _count(self, peer, n):
        self.forwarded[peer] = self.forwarded.get(peer, 0) + n

    def step(self, peer: bytes, dests, now: float, packets: int = 4) -> None:
        gw = self.gw
        for d in dests:
            for _ in range(packets):
                if gw.outbound(peer, dst(d), PKT, ip4(dst(d)), now) == FORWARD:
                    self._count(peer, PKT)
                if gw.inbound(peer, dst(d), PKT, now) == FORWARD:      # the reply, downstream
                    self._count(peer, PKT)
        self.settle(now)

    def settle(self, now: float) -> None:
        gw = self.gw
        for _ in range(3):
            for peer, msg in gw.take_outgoing():
                if isinstance(msg, m.Propose):
                    gw.on_message(peer, m.Accept(msg.contract_id), now)
                    if peer in self.payers:
                        gw.on_message(peer, m.Pay(msg.contract_id, 10**9, "dummy", "proof-" + msg.contract_id),
                                      now)
            for ev in gw.take_events():
                if isinstance(ev, E.PaymentReceived):
                    gw.payment_confirmed(ev.contract_id, now, counterpart=ev.counterpart)
            for peer, p in gw.take_released():
                self._count(peer, len(p))
            gw.poll(now)

    def run(self, peer, dests, start: float, seconds: float, dt: float = 0.25) -> float:
        t = start
        while t < start + seconds:
            self.step(peer, dests, t)
            t += dt
        return t


def overshoot(contracts: int) -> int:
    """A contract's last slice may be passed by one packet each way before it stops."""
    return contracts * 2 * PKT


def test_never_paying_peer_gets_one_grace_across_20_destinations():
    gw = Seller(pricing())
    mk = Market(gw)
    t = mk.run(key(0), range(20), NOW, 60)     # twice the grace time, well past every deadline
    grace = 50 * BYTES_PER_KB
    assert 0.9 * grace <= mk.forwarded[key(0)] <= grace + overshoot(20), mk.forwarded
    # the grace ran out unpaid: no grace any more, nothing more flows to any destination
    assert gw.status(t)["peers"][key(0).hex()]["grace"] is False
    before = mk.forwarded[key(0)]
    mk.run(key(0), range(25), t, 20)
    assert mk.forwarded[key(0)] == before
    proposes = [msg for _, msg in gw.take_outgoing() if isinstance(msg, m.Propose)]
    assert all(p.grace_kb == 0 for p in proposes)


def test_a_stranger_pool_is_one_grace_even_before_any_deadline():
    # grace_time_s long: the bytes alone bound it, across destinations opened one by one
    gw = Seller(pricing(grace_time_s=3600))
    mk = Market(gw)
    t = NOW
    for d in range(20):
        t = mk.run(key(0), [d], t, 1)
    assert mk.forwarded[key(0)] <= 50 * BYTES_PER_KB + overshoot(20)
    st = gw.status(t)
    assert st["peers"][key(0).hex()]["grace_used_kb"] >= 45
    assert st["grace"]["peers_in_grace"] == 1


def test_fresh_keys_share_the_strangers_budget():
    per_min = 100
    gw = Seller(pricing(strangers_kb_per_min=per_min))
    mk = Market(gw)
    t = NOW
    for i in range(10):                       # ten fresh keys one after another, 3 s each
        t = mk.run(key(i), range(3), t, 3)
    elapsed = t - NOW
    total = sum(mk.forwarded.values())
    bound = per_min * BYTES_PER_KB * (1 + elapsed / 60) + overshoot(30)
    assert total <= bound, (total, bound)
    assert total >= per_min * BYTES_PER_KB * 0.9          # the budget is used, not withheld
    g = gw.status(t)["grace"]
    assert g["strangers_kb_per_min"] == per_min and g["strangers_used_kb_last_min"] >= per_min * 0.9
    # without the shared budget each key would have had its own 50 KB: 500 KB
    assert total < 10 * 50 * BYTES_PER_KB / 2


def test_payer_keeps_its_grace_while_strangers_exhausted_the_budget():
    credit = MemoryCredit({key(11): 10**9})
    gw = Seller(pricing(strangers_kb_per_min=20), credit=credit)
    mk = Market(gw, payers={key(10)})
    mk.run(key(10), [0], NOW, 2)                      # the payer pays its first contract
    t = NOW + 2
    for i in range(5):                                # strangers use up their budget
        t = mk.run(key(i), range(3), t, 1)
    assert gw.strangers.left(t) < PKT
    # the payer opens a new destination; its payment has not come yet (it stops paying):
    # it still gets its own grace at once
    mk.payers.discard(key(10))
    before = mk.forwarded[key(10)]
    mk.run(key(10), [5], t, 2)
    assert mk.forwarded[key(10)] - before >= 40 * BYTES_PER_KB
    # a peer with prepaid credit and no paid contract yet: its own grace, not the strangers'
    mk.run(key(11), [6], t, 2)
    assert mk.forwarded.get(key(11), 0) >= 40 * BYTES_PER_KB
    # a new stranger now: nothing beyond what the budget refilled meanwhile
    mk.run(key(12), [7], t, 2)
    assert mk.forwarded.get(key(12), 0) <= 20 * BYTES_PER_KB * 2 / 60 + gw.strangers.per_min // 60 + 2 * PKT


def test_every_confirmed_payment_renews_the_peers_grace():
    gw = Seller(pricing(grace_kb=20))
    mk = Market(gw, payers={key(0)})
    t = NOW
    for d in range(6):          # six destinations, each paid: grace is renewed for each
        t = mk.run(key(0), [d], t, 2)
    st = gw.status(t)["peers"][key(0).hex()]
    assert st["paid_contracts"] == 6 and st["grace"] and st["grace_used_kb"] == 0
    assert mk.forwarded[key(0)] >= 6 * 20 * BYTES_PER_KB


def test_used_grace_survives_a_restart():
    gw = Seller(pricing(grace_time_s=3600))
    mk = Market(gw)
    t = mk.run(key(0), range(5), NOW, 5)
    used = mk.forwarded[key(0)]
    assert used >= 45 * BYTES_PER_KB
    again = Seller(pricing(grace_time_s=3600))
    again.restore(gw.snapshot(), t)
    mk2 = Market(again)
    mk2.run(key(0), range(5, 10), t, 5)              # new destinations after the restart
    assert mk2.forwarded.get(key(0), 0) <= overshoot(5)


def test_incremental_records_carry_the_grace():
    gw = Seller(pricing(grace_time_s=3600))
    gw.mark_all_dirty()
    gw.snapshot_changes()
    mk = Market(gw)
    mk.run(key(0), [0], NOW, 1)
    rec = gw.snapshot_changes()["peers"][key(0).hex()]
    assert rec["grace_used"] > 0 and rec["grace_from"] == NOW


def test_no_strangers_budget_means_strangers_pay_first():
    gw = Seller(pricing(strangers_kb_per_min=0))
    mk = Market(gw)
    mk.run(key(0), range(3), NOW, 5)
    assert mk.forwarded.get(key(0), 0) == 0
    mk.payers.add(key(0))          # it pays now: its held packets and traffic flow
    mk.run(key(0), range(3), NOW + 40, 2)
    assert mk.forwarded[key(0)] > 0


def test_strangers_budget_bucket():
    b = StrangersBudget(60_000)               # 1000 bytes a second
    assert b.take(100_000, 0.0) == 60_000     # a minute's worth at once
    assert b.take(1, 0.0) == 0
    assert b.take(5_000, 2.0) == 2_000
    b.charge(1_500, 2.0)                      # a packet past its slice: in debt
    assert b.left(3.0) == 0 and b.left(4.0) == 500
    assert b.used_last_min(2.0) == 63_500 and b.used_last_min(61.0) == 3_500
    assert b.take(10, 1.0) == 0               # the clock went back: no refill, no crash
    assert slice_bytes(50_000) == 4 * BYTES_PER_KB and slice_bytes(10**9) == 64 * BYTES_PER_KB
