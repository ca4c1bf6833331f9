"""Two in-memory peers: Seller + Buyer over two control channels and a
lossy, reordering in-memory link, driven by a fake clock."""
import json

import pytest

from tunnelgate.protocol import events as E
from tunnelgate import packet as pk
from tunnelgate.meter import DROP, FORWARD, HELD
from tunnelgate.money import parse_price
from tunnelgate.protocol import buyer as ce
from tunnelgate.protocol import buyer_budget as budget
from tunnelgate.protocol import seller as ge
from tunnelgate.protocol.buyer import Buyer
from tunnelgate.protocol.seller import Seller
from tunnelgate.protocol.seller_timers import T_USAGE
from tunnelgate.protocol.messages import Propose, Request, Usage

from engine_world import DST, PEER, World, ip4, policy, pricing


def test_accept_at_asked_price():
    w = World()
    assert w.send() == HELD
    w.run(1)
    assert len(w.released) == 1
    [c] = w.gw.contracts(PEER, w.now)
    assert c["price"] == parse_price("0.5") and c["state"] == "PAID"
    assert w.cl.contracts(w.now)[0]["state"] == "PAID"
    assert w.send() == FORWARD and w.reply() == FORWARD
    assert E.PaymentDue.kind in w.kinds("cl")
    assert w.cl.spend(w.now)["total"] == 50       # 100 KB * 0.5 msat/KB


def test_reject_with_counter_the_gateway_meets():
    w = World(pr=pricing(default_price=parse_price("1")), po=policy(max_price=parse_price("0.9")))
    w.send()
    w.run(2)
    [c] = w.gw.contracts(PEER, w.now)
    assert c["price"] == parse_price("0.8") and c["round"] == 2 and c["state"] == "PAID"
    assert len(w.released) == 1


def test_counter_below_floor_no_deal_backoff_and_status():
    w = World(pr=pricing(default_price=parse_price("1"), floor_price=parse_price("0.8"),
                         no_deal_backoff_s=30),
              po=policy(max_price=parse_price("0.3")))
    assert w.send() == HELD
    w.run(2)
    assert w.released == [] and w.delivered == 0
    assert E.NoDeal.kind in w.kinds("gw") and E.NoDeal.kind in w.kinds("cl")
    prices = [e.price for e in w.gev if e.kind == E.Proposed.kind]
    assert prices == [parse_price("1"), parse_price("0.8")]          # then floor, then no deal
    st = w.gw.status(w.now)["peers"][PEER.hex()]
    assert "below the floor" in st["no_deal"]["198.18.2.7/32"]["reason"]
    assert "below the floor" in w.cl.status(w.now)["destinations"]["198.18.2.7/32"]["no_deal_reason"]
    assert "no deal" in w.gw.why(PEER, DST, w.now)
    assert w.send() == DROP and st["drops_held"] == 1     # the held packet, dropped at no-deal
    n = len([e for e in w.gev if e.kind == E.Proposed.kind])
    w.run(10)
    assert w.send() == DROP
    assert len([e for e in w.gev if e.kind == E.Proposed.kind]) == n     # not re-proposed
    w.run(25)
    assert E.NoDealExpired.kind in w.kinds("gw")
    assert w.send() == HELD                                              # negotiates again


def test_budget_exceeded_not_accepted_with_reason():
    w = World(po=policy(max_spend_total=40))                            # contract costs 50 msat
    w.send()
    w.run(2)
    assert w.released == [] and w.gw.contracts(PEER, w.now) == []
    ev = [e for e in w.cev if e.kind == E.BudgetExceeded.kind]
    assert ev and "total budget" in ev[0].reason
    assert "total budget" in w.cl.status(w.now)["budget_reason"]
    assert "budget" in w.gw.status(w.now)["peers"][PEER.hex()]["no_deal"]["198.18.2.7/32"]["reason"]


def test_data_limit_stops_within_one_packet():
    w = World(pr=pricing(contract_kb=10), loss=0)
    w.send()
    w.run(1)
    results = [w.send(size=1300) for _ in range(20)]
    [c] = [c for c in w.gw_contract() if c["state"] == "EXHAUSTED"]
    assert 10_000 <= c["used"] < 10_000 + 1300
    first_stop = results.index(HELD)
    assert all(r != FORWARD for r in results[first_stop:])
    assert w.reply() == DROP or w.gw_contract()[-1]["state"] in ("PROPOSED",)


def test_expiry_stops_at_expiry():
    w = World(pr=pricing(contract_time_s=10), loss=0)
    w.send()
    w.run(1)
    [c] = w.gw.contracts(PEER, w.now)
    w.run(8.5)
    assert w.send() == FORWARD
    w.run(0.6)                    # past the expiry (polled: ended without traffic)
    assert w.send() != FORWARD and w.reply() == DROP
    assert w.gw_contract(c["contract_id"])["state"] == "EXPIRED"


def test_renewal_chains_tiny_contracts_without_gap():
    w = World(pr=pricing(contract_kb=20), po=policy(data_renewal_kb=15, time_renewal_s=5),
              loss=0.05, reorder=0.3, seed=6)
    w.send()
    w.run(0.5)
    w.step(0.04)
    results = w.stream(400, 0.04)    # 1000 B every 40 ms = 25 KB/s, contracts of 20 KB
    assert results.count(FORWARD) == len(results), [i for i, r in enumerate(results) if r != FORWARD]
    ended = [c for c in w.gw_contract() if c["state"] == "EXHAUSTED"]
    assert len(ended) >= 10
    assert all(c["paid"] for c in ended)


def test_client_that_stops_paying_loses_service_and_grace():
    w = World(autopay=False, pr=pricing(grace_time_s=5, grace_kb=1000))
    w.send()
    w.run(1)
    assert len(w.released) == 1
    [c] = w.gw.contracts(PEER, w.now)
    assert c["state"] == "GRACE"
    assert w.send() == FORWARD
    w.run(4.5)
    assert w.send() != FORWARD                 # grace over: revoked
    assert w.gw_contract(c["contract_id"])["state"] == "REVOKED"
    assert E.Revoked.kind in w.kinds("cl")
    assert not w.gw.status(w.now)["peers"][PEER.hex()]["grace"]
    w.run(1)
    # the next contract: no grace; accepted but nothing flows until it is paid
    props = [e for e in w.gev if e.kind == E.Proposed.kind]
    assert len(props) == 2
    c2 = w.gw.contracts(PEER, w.now)[0]
    assert c2["state"] == "ACCEPTED"
    assert w.send() == HELD
    w.autopay = True
    w.cl.paid(PEER, c2["contract_id"], "dummy", "late-proof")
    w.run(1)
    assert w.gw_contract(c2["contract_id"])["state"] == "PAID"
    assert w.send() == FORWARD
    assert w.gw.status(w.now)["peers"][PEER.hex()]["grace"]


def test_grace_bytes_bound_traffic_until_paid():
    w = World(confirm=False, pr=pricing(grace_kb=5, grace_time_s=30), loss=0)
    w.send()
    w.run(0.5)
    rs = [w.send() for _ in range(10)]
    assert rs[:4] == [FORWARD] * 4 and HELD in rs
    cid = w.gw.contracts(PEER, w.now)[0]["contract_id"]
    w.gw.payment_confirmed(cid, w.now)
    assert len(w.gw.take_released()) >= 1
    assert w.send() == FORWARD


def test_held_packet_bounds_and_drop_counters():
    gw = Seller(pricing(max_pending_proposals=1000))   # the held bound alone
    rs = [gw.outbound(PEER, pk.addr_bytes(f"198.18.3.{i}"), 1000, ip4(f"198.18.3.{i}"), 0.0)
          for i in range(100)]
    assert rs.count(HELD) == 64 and rs.count(DROP) == 36
    st = gw.status(0.0)["peers"][PEER.hex()]
    assert st["held_packets"] == 64 and st["drops_held"] == 36
    gw2 = Seller(pricing(held_max_flow_packets=64))   # the per-peer byte bound alone
    big = [gw2.outbound(PEER, pk.addr_bytes(DST), 5000, ip4(total=5000), 0.0) for _ in range(60)]
    assert big.count(HELD) == 51                     # 51 * 5000 <= 256 000
    assert gw2.status(0.0)["peers"][PEER.hex()]["held_bytes"] == 255_000
    # proposal unanswered: held packets are dropped and counted
    gw2.poll(100.0)
    st = gw2.status(100.0)["peers"][PEER.hex()]
    assert st["held_packets"] == 0 and st["drops_held"] == 9 + 51


def test_usage_reports_and_disagreement_event():
    w = World(loss=0)
    w.send()
    w.run(1)
    for _ in range(20):
        w.send()
        w.reply()
    w.run(1.5)
    assert E.UsageMismatch.kind not in w.kinds("cl")
    c = w.cl.contracts(w.now)[0]
    for _ in range(40):       # gateway meters replies the client never saw
        w.gw.inbound(PEER, pk.addr_bytes(DST), 1000, w.now)
    w.run(1.5)
    ev = [e for e in w.cev if e.kind == E.UsageMismatch.kind]
    # 40 unseen replies + the first packet, held by the gateway before the client had a contract
    assert ev and ev[0].gateway - ev[0].own == 41_000
    assert ev[0].contract_id == c["contract_id"]


def test_free_prefix_needs_no_contract():
    w = World(pr=pricing(prefix_prices=(("198.18.9.0/24", 0), ("198.18.2.0/24", parse_price("0.7")))))
    assert w.send("198.18.9.5") == FORWARD and w.reply("198.18.9.5") == FORWARD
    w.run(1)
    assert w.gw.contracts(PEER, w.now) == []
    assert w.send("198.18.2.7") == HELD
    w.run(1)
    assert w.gw.contracts(PEER, w.now)[0]["price"] == parse_price("0.7")


@pytest.mark.parametrize("order", [1, -1], ids=["wide-first", "narrow-first"])
def test_overlapping_prefixes_take_the_longest_match(order):
    # as a routing table: a free or cheaper network inside a priced one keeps its
    # own price (and the client its own cap), whatever the order they are listed in
    routes = (("0.0.0.0/0", parse_price("0.9")), ("198.18.0.0/15", parse_price("0.6")),
              ("198.18.9.0/24", 0))[::order]
    caps = (("0.0.0.0/0", parse_price("0.9")), ("198.18.2.0/24", parse_price("0.5")))[::order]
    w = World(pr=pricing(prefix_prices=routes), po=policy(max_price=parse_price("2"), prefix_max_prices=caps))
    assert w.send("198.18.9.5") == FORWARD                       # /24: free, no contract
    w.send("198.18.3.1")                                         # /15: 0.6, under the /0 cap
    w.send("198.18.2.7")                                         # /15: 0.6 asked, over the /24 cap:
    w.send("203.0.113.9")                                        # /0: 0.9
    w.run(3)
    price = {c["destination"]: c["price"] for c in w.gw.contracts(PEER, w.now)}
    assert price == {"198.18.3.1/32": parse_price("0.6"),
                     "198.18.2.7/32": parse_price("0.48"),                 # countered at 0.8 x 0.6
                     "203.0.113.9/32": parse_price("0.9")}


def test_scope_prefix_length():
    w = World(pr=pricing(scope=24))
    w.send("198.18.2.7")
    w.run(1)
    [c] = w.gw.contracts(PEER, w.now)
    assert c["destination"] == "198.18.2.0/24"
    assert w.send("198.18.2.200") == FORWARD and w.reply("198.18.2.99") == FORWARD
    # the client meters from its ACCEPT on; the first (held) packet is the gateway's only
    assert w.cl.contracts(w.now)[0]["used"] + 1000 == w.gw.contracts(PEER, w.now)[0]["used"]
    assert w.send("198.18.3.1") == HELD


def test_ipv6_destination():
    w = World(pr=pricing(scope6=48))
    a = pk.addr_bytes("2001:db8:1::5")
    assert w.gw.outbound(PEER, a, 1000, b"\x60" + bytes(999), w.now) == HELD
    w.run(1)
    assert w.gw.contracts(PEER, w.now)[0]["destination"] == "2001:db8:1::/48"
    assert w.gw.inbound(PEER, pk.addr_bytes("2001:db8:1::77"), 100, w.now) == FORWARD


def test_snapshot_restore_mid_contract_keeps_quota():
    w = World(pr=pricing(contract_kb=10), loss=0)
    w.send()
    w.run(1)
    for _ in range(5):
        assert w.send() == FORWARD
    gsnap = json.loads(json.dumps(w.gw.snapshot()))
    csnap = json.loads(json.dumps(w.cl.snapshot()))
    gw2 = Seller(pricing(contract_kb=10))
    gw2.restore(gsnap, w.now)
    cl2 = Buyer(policy())
    cl2.restore(csnap, w.now)
    [c] = gw2.contracts(PEER, w.now)
    assert c["used"] == 6000 and c["state"] == "PAID"
    assert cl2.contracts(w.now)[0]["used"] == 5000      # first packet was held, before the contract
    n = 0
    while gw2.outbound(PEER, pk.addr_bytes(DST), 1000, ip4(), w.now) == FORWARD:
        n += 1
    assert n == 4


def test_inbound_without_contract_dropped():
    gw = Seller(pricing())
    assert gw.inbound(PEER, DST, 100, 0.0) == DROP
    assert gw.status(0.0)["peers"][PEER.hex()]["drops_inbound_no_contract"] == 1


def test_burst_metering():
    w = World(loss=0)
    w.send()
    w.run(1)
    assert w.gw.outbound_burst(PEER, pk.addr_bytes(DST), 8000, 8, w.now) == FORWARD
    assert w.gw.contracts(PEER, w.now)[0]["used"] == 9000


# --- issue 3 regressions -------------------------------------------------------------------

def test_zero_renewal_settings_never_renew():
    """data_renewal_kb = 0 and time_renewal_s = 0 mean "never renew": no REQUEST, not even
    when the data or the time runs out (the next contract comes only from new traffic)."""
    w = World(pr=pricing(contract_kb=10, contract_time_s=5),
              po=policy(data_renewal_kb=0, time_renewal_s=0), loss=0)
    w.send()
    w.run(0.5)
    for _ in range(12):
        w.send(size=1000)
    w.run(6)
    assert E.RenewalRequested.kind not in w.kinds("cl")
    assert [e for e in w.gev if e.kind == E.Proposed.kind].__len__() == 2   # the 2nd: on new traffic
    c = Buyer(policy(data_renewal_kb=0, time_renewal_s=0))
    c.on_message(PEER, Propose("x1", DST + "/32", parse_price("0.5"), 10, 5, ("dummy",), "", 1, 5, 50), 0.0)
    c.take_outgoing()
    d = pk.addr_bytes(DST)
    for i in range(10):
        c.outbound(d, 1000, 0.1 * i)
    c.poll(4.9)
    assert not [m for _, m in c.take_outgoing() if isinstance(m, Request)]


def test_client_final_usage_ends_contract_and_compares_after_settling():
    cl = Buyer(policy(usage_tolerance="0", usage_slack_bytes=0))
    cl.on_message(PEER, Propose("k1", DST + "/32", parse_price("0.5"), 10, 60, ("dummy",), "", 1, 5, 50), 0.0)
    cl.take_outgoing()
    cl.take_events()
    d = pk.addr_bytes(DST)
    for _ in range(3):
        cl.outbound(d, 1000, 1.0)
    # the gateway ended it (e.g. its own count reached the limit first): final USAGE
    cl.on_message(PEER, Usage.one("k1", 3000, 7000, True), 2.0)
    [c] = cl.contracts(2.0, history=True)
    assert c["state"] == "EXHAUSTED" and c["reason"] == "data limit reached (gateway)"
    assert cl.status(2.0)["destinations"][DST + "/32"]["contract"] is None
    kinds = [e.kind for e in cl.take_events()]
    assert E.Exhausted.kind in kinds and E.UsageMismatch.kind not in kinds
    cl.poll(2.0 + ce.USAGE_SETTLE_S - 0.1)
    assert not cl.take_events()
    cl.poll(2.0 + ce.USAGE_SETTLE_S)              # settled: 3000 here vs 10000 there
    [ev] = cl.take_events()
    assert ev.kind == E.UsageMismatch.kind and ev.gateway == 10_000 and ev.own == 3000
    # a final USAGE below the limit: ended by the gateway (expired there)
    cl.on_message(PEER, Propose("k2", DST + "/32", parse_price("0.5"), 10, 60, ("dummy",), "", 1, 5, 50), 3.0)
    cl.on_message(PEER, Usage.one("k2", 0, 0, True), 3.5)
    assert [c for c in cl.contracts(3.5, history=True) if c["contract_id"] == "k2"][0]["state"] == "EXPIRED"


def test_contract_that_runs_out_before_its_payment_is_still_paid():
    """A tiny contract used up in grace before the payment is ready: the client still pays
    (it used it), the gateway takes the payment and counts it."""
    w = World(autopay=False, pr=pricing(contract_kb=5, grace_kb=50, grace_time_s=5), loss=0)
    w.send()
    w.run(0.3)
    [c] = w.gw.contracts(PEER, w.now)
    cid = c["contract_id"]
    for _ in range(8):
        w.send(size=1000)
    w.run(0.3)
    assert w.gw_contract(cid)["state"] == "EXHAUSTED" and not w.gw_contract(cid)["paid"]
    w.cl.paid(PEER, cid, "dummy", "proof-late")          # used to raise KeyError: no live contract
    w.run(0.5)
    assert w.gw_contract(cid)["paid"]
    st = w.gw.status(w.now)["peers"][PEER.hex()]
    assert st["grace"] and st["paid_contracts"] == 1
    assert E.Paid.kind in w.kinds("cl")


def test_contract_that_ran_out_unpaid_costs_the_peer_its_grace():
    w = World(autopay=False, pr=pricing(contract_kb=5, grace_kb=50, grace_time_s=2), loss=0)
    w.send()
    w.run(0.3)
    cid = w.gw.contracts(PEER, w.now)[0]["contract_id"]
    for _ in range(8):
        w.send(size=1000)
    w.run(2.5)
    assert w.gw_contract(cid)["state"] == "EXHAUSTED"
    assert not w.gw.status(w.now)["peers"][PEER.hex()]["grace"]
    assert any(e.kind == E.PaymentFailed.kind and e.contract_id == cid for e in w.gev)


def test_client_restored_with_an_unpaid_contract_pays_it_again():
    w = World(autopay=False, loss=0)
    w.send()
    w.run(0.3)
    snap = json.loads(json.dumps(w.cl.snapshot()))
    cl2 = Buyer(policy())
    cl2.restore(snap, w.now)
    [ev] = [e for e in cl2.take_events() if e.kind == E.PaymentDue.kind]
    [c] = w.cl.contracts(w.now)
    assert ev.contract_id == c["contract_id"] and ev.amount_msat == c["cost_msat"]
    assert ev.methods == ("dummy",)
    # a paid one is not paid again
    w.autopay = True
    w.cl.paid(PEER, c["contract_id"], "dummy", "p")
    w.run(0.5)
    cl3 = Buyer(policy())
    cl3.restore(json.loads(json.dumps(w.cl.snapshot())), w.now)
    assert not [e for e in cl3.take_events() if e.kind == E.PaymentDue.kind]


def test_fast_consumption_keeps_two_contracts_queued():
    # 20 KB contracts used up in 0.8 s: renewal starts at activation and two wait in line,
    # so a lost or slow negotiation costs no gap
    w = World(pr=pricing(contract_kb=20), po=policy(data_renewal_kb=15, time_renewal_s=5), loss=0)
    w.send()
    w.run(0.5)
    results = w.stream(120, 0.04)
    assert results.count(FORWARD) == len(results)
    w.run(0.2)                       # let the negotiation in flight finish
    queued = w.cl.status(w.now)["destinations"][DST + "/32"]["queued"]
    assert len(queued) == 2


def test_timers_stay_bounded_one_usage_report_chain_per_peer():
    """Contracts that run out on the USAGE timer and hand over to the queued one must not start
    a second report chain; the timer heap holds what is pending, not history."""
    w = World(pr=pricing(contract_kb=20), po=policy(data_renewal_kb=15, time_renewal_s=5),
              loss=0, reorder=0, seed=6)
    w.send()
    w.run(0.5)
    for i in range(300):
        w.send(size=1000 if i % 7 else 2000)
        w.step(0.04)
        usage = [e for e in w.gw.books[PEER]._timers if e[2] == T_USAGE]
        assert len(usage) <= 2, usage                 # the chain (+ one just set by a new contract)
    w.run(3)
    assert len([e for e in w.gw.books[PEER]._timers if e[2] == T_USAGE]) <= 1
    assert len(w.gw.books[PEER]._timers) < 40 and len(w.gw._filed) <= 2
    ended = [c for c in w.gw_contract() if c["state"] == "EXHAUSTED"]
    assert len(ended) >= 10


def test_renewal_margin_follows_the_rate_not_just_data_renewal_kb():
    # 100 KB contracts used in ~10 s, renewal margin 1 KB (0.1 s at this rate): a fixed margin
    # asks for the next contract with one packet left, and packets wait at every switch. The
    # margin follows the last contract's rate (RENEW_LEAD_S of traffic), so none wait.
    w = World(pr=pricing(contract_kb=100, grace_kb=0), po=policy(data_renewal_kb=1), loss=0, reorder=0)
    w.send()
    w.run(0.5)
    results = w.stream(400, 0.1)            # 40 s, 400 KB: four contracts
    # the first contract too: poll sees it running out at the rate it is being used at
    assert results.count(FORWARD) == len(results), results.count(HELD)
    asks = [e for e in w.cev if e.kind == E.RenewalRequested.kind]
    assert len(asks) >= 3
    ended = [c for c in w.gw_contract() if c["state"] == "EXHAUSTED"]
    assert len(ended) >= 3


def test_a_burst_early_in_a_contract_buys_nothing_ahead():
    # 200 KB right after activation out of a 1000 KB contract is a high rate, but the
    # contract is far from used up: no renewal until it is at least half used
    w = World(pr=pricing(contract_kb=1000, grace_kb=0), po=policy(data_renewal_kb=1), loss=0, reorder=0)
    w.send()
    w.run(0.2)
    for _ in range(200):
        assert w.send() == FORWARD
    w.run(3)
    assert not [e for e in w.cev if e.kind == E.RenewalRequested.kind]
    for _ in range(450):                      # past half, still fast: now it renews
        w.send()
    w.step(0.1)
    w.run(0.5)
    assert [e for e in w.cev if e.kind == E.RenewalRequested.kind]


def _sized_world():
    """A client whose gateway takes sized requests, at most 600 KB, its first contract running."""
    w = World(pr=pricing(contract_kb=100, max_contract_kb=600), po=policy(data_renewal_kb=15, time_renewal_s=5),
              loss=0, reorder=0)
    w.cl.book(PEER).sized_requests = True
    w.send()
    w.run(0.5)
    return w


def test_a_fast_flow_asks_for_bigger_contracts_growing_step_by_step():
    # 1 MB/s against 100 KB contracts: ten negotiations a second unless the client asks for
    # CONTRACT_FOR_S of traffic; it may grow the size at most GROWTH times per contract and
    # the gateway gives at most max_contract_kb
    w = _sized_world()
    results = w.stream(1000, 0.01, size=10_000)     # 10 s at 1 MB/s
    assert results.count(FORWARD) == len(results)
    sizes = [w.gw_contract(e.contract_id)["limit_kb"] for e in w.gev if e.kind == E.Proposed.kind]
    assert sizes[0] == 100 and max(sizes) == 600
    assert all(b <= budget.GROWTH * a for a, b in zip(sizes, sizes[1:])), sizes
    assert len(sizes) < 25, sizes             # 100 KB contracts would have been 100
    asks = [e.limit_kb for e in w.cev if e.kind == E.RenewalRequested.kind and e.limit_kb]
    assert asks and max(asks) <= 1000 * CONTRACT_FOR_S_TOLERANCE   # ~CONTRACT_FOR_S at 1 MB/s
    # when the transfer stops, what is left unused is about one contract, not a queue of them
    w.run(3)
    queued = w.cl.status(w.now)["destinations"][DST + "/32"]["queued"]
    assert len(queued) <= 1


CONTRACT_FOR_S_TOLERANCE = 1.3 * budget.CONTRACT_FOR_S      # the rate is measured over a quarter contract


def test_asks_grow_from_what_was_asked_when_the_seller_gives_less():
    # a seller that sells less than asked (here its max_contract_kb; a relay whose upstream
    # stock lags) must not set the growth back: the asks grow toward CONTRACT_FOR_S of
    # traffic (5 MB/s: ~5000 KB), not stay at GROWTH x what was sold (1200 KB)
    w = _sized_world()
    w.stream(2500, 0.002, size=10_000)               # 5 s at 5 MB/s
    asks = [e.limit_kb for e in w.cev if e.kind == E.RenewalRequested.kind and e.limit_kb]
    assert max(asks) > 2 * budget.GROWTH * 600, asks
    assert max(asks) <= 5000 * CONTRACT_FOR_S_TOLERANCE, asks
    assert all(b <= budget.GROWTH * max(a, 600) for a, b in zip(asks, asks[1:])), asks


def test_without_the_sized_feature_requests_carry_no_size():
    w = World(pr=pricing(contract_kb=20, max_contract_kb=600), po=policy(data_renewal_kb=15, time_renewal_s=5),
              loss=0, reorder=0)
    sent = []
    take = w.cl.take_outgoing
    w.cl.take_outgoing = lambda: [sent.append(x[1]) or x for x in take()]
    w.send()
    w.run(0.5)
    w.stream(300, 0.01)
    requests = [x for x in sent if isinstance(x, Request)]
    assert requests and all(r.limit_kb is None for r in requests)
    assert {c["limit_kb"] for c in w.gw_contract()} == {20}


@pytest.mark.parametrize("limit,funds,most_kb", [(100, None, 200), (None, 60, 120)], ids=["budget", "wallet"])
def test_sized_asks_stay_within_the_budget_and_the_wallet_at_the_last_price(limit, funds, most_kb):
    # 0.5 msat/KB: a 100 msat total budget affords 200 KB, a wallet of 60 msat 120 KB,
    # whatever the rate
    w = World(pr=pricing(contract_kb=20, max_contract_kb=10_000),
              po=policy(data_renewal_kb=15, time_renewal_s=5, max_spend_total=limit), loss=0, reorder=0)
    w.cl.book(PEER).sized_requests = True
    w.cl.funds_msat = funds
    w.send()
    w.run(0.5)
    w.stream(300, 0.01, size=1400)
    asks = [e.limit_kb for e in w.cev if e.kind == E.RenewalRequested.kind and e.limit_kb]
    assert asks and all(a <= most_kb for a in asks), asks
    if limit:
        assert w.cl.spent_total <= limit


def test_gateway_bounds_a_requested_size():
    gw = Seller(pricing(contract_kb=20, max_contract_kb=600))
    now = 1000.0
    for i, (asked, got) in enumerate(((None, 20), (1, 20), (300, 300), (10**9, 600))):
        gw.on_message(PEER, Request(f"198.18.2.{i + 1}/32", asked), now)
        props = [m for _, m in gw.take_outgoing() if isinstance(m, Propose)]
        assert [p.limit_kb for p in props] == [got], (asked, props)


def test_a_flow_that_speeds_up_long_after_its_contract_began_renews_at_half():
    # the first packet bought the contract five minutes ago; now a transfer runs through it
    # at 5 MB/s. The rate since activation says "slow" until 3 ms before the end and a 1 KB
    # margin is 0.2 ms, both shorter than a negotiation: the quarter and half checkpoints
    # see the real rate and renew at half.
    w = World(pr=pricing(contract_kb=1000, contract_time_s=3600, grace_kb=0), po=policy(data_renewal_kb=1),
              loss=0, reorder=0)
    w.send()
    w.run(300, dt=1.0)
    results = w.stream(600, 0.001, size=5000)
    assert results.count(FORWARD) == len(results), results.count(HELD)
    asks = [e for e in w.cev if e.kind == E.RenewalRequested.kind]
    assert asks
