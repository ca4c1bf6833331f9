"""Per-peer state at the gateway stays bounded whatever one authenticated peer sends:
open proposals, flows, held packets (per flow, per peer, all peers), events."""
import struct

from tunnelgate.protocol import events as E
from tunnelgate import packet as pk
from tunnelgate.meter import DROP, FORWARD, HELD
from tunnelgate.money import parse_price
from tunnelgate.protocol.seller_hold import SUPPRESSED_REPORT_S
from tunnelgate.protocol import messages as m
from tunnelgate.protocol.seller import Seller, Pricing

PEER = b"\x01" * 32
NOW = 1_000_000.0


def pricing(**kw):
    d = dict(default_price=parse_price("0.5"), floor_price=parse_price("0.3"), contract_kb=100,
             contract_time_s=600, grace_time_s=5, grace_kb=50, payment_methods=("dummy",), account="acct")
    d.update(kw)
    return Pricing(**d)


def dst(i: int) -> bytes:
    return bytes((198, 18 + (i >> 16 & 1), i >> 8 & 255, i & 255))


def ip4(d: bytes, total: int = 60) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0,
                       pk.addr_bytes("100.64.0.2"), d) + bytes(total - 20)


def open_proposals(gw, peer=PEER) -> int:
    return sum(1 for f in gw.meter.peers.get(peer, {}).values() if f.proposal is not None)


def spray(gw, n, now=NOW, peer=PEER):
    return [gw.outbound(peer, dst(i), 60, ip4(dst(i)), now) for i in range(n)]


def test_spray_of_new_destinations_is_bounded():
    gw = Seller(pricing())
    limit = gw.pricing.max_pending_proposals
    rs = spray(gw, 100_000)
    assert rs.count(HELD) == limit and rs.count(DROP) == 100_000 - limit
    assert open_proposals(gw) == limit == sum(len(b.live) for b in gw.books.values())
    assert len(gw.meter.peers[PEER]) == limit          # no flow for a dropped destination
    proposes = [msg for _, msg in gw.take_outgoing() if isinstance(msg, m.Propose)]
    assert len(proposes) == limit
    events = gw.take_events()
    kinds = [e.kind for e in events]
    assert kinds.count(E.Proposed.kind) == limit
    assert kinds.count(E.ProposalsSuppressed.kind) == 1     # the first drop, told at once
    st = gw.status(NOW)["peers"][PEER.hex()]
    assert st["open_proposals"] == limit and st["drops_proposal_limit"] == 100_000 - limit
    assert st["held_packets"] == limit

    # the rest of the burst is reported in one event when the report interval ends
    gw.poll(NOW + SUPPRESSED_REPORT_S)
    sup = [e for e in gw.take_events() if e.kind == E.ProposalsSuppressed.kind]
    assert len(sup) == 1 and sup[0].dropped == 100_000 - limit - 1

    # unanswered proposals expire: the peer may negotiate again
    t = NOW + gw.pricing.proposal_timeout_s + SUPPRESSED_REPORT_S + 1
    gw.poll(t)
    assert open_proposals(gw) == 0 and gw.status(t)["peers"][PEER.hex()]["open_proposals"] == 0
    assert gw.held_total_bytes == 0
    assert gw.outbound(PEER, dst(200_000 % 65536), 60, ip4(dst(200_000 % 65536)), t) == HELD


def test_proposal_count_follows_accept_reject_and_no_deal():
    gw = Seller(pricing(max_pending_proposals=4))
    spray(gw, 4)
    ids = [msg.contract_id for _, msg in gw.take_outgoing() if isinstance(msg, m.Propose)]
    assert spray(gw, 5)[4] == DROP                      # a fifth destination: over the limit
    gw.on_message(PEER, m.Accept(ids[0]), NOW)
    gw.on_message(PEER, m.Reject(ids[1], "no"), NOW)     # declined outright: no deal
    gw.on_message(PEER, m.Reject(ids[2], "cheaper", price=parse_price("0.4")), NOW)  # a new round
    assert open_proposals(gw) == 2                      # ids[2]'s counter round and ids[3]
    assert gw.status(NOW)["peers"][PEER.hex()]["open_proposals"] == 2
    assert gw.outbound(PEER, dst(10), 60, ip4(dst(10)), NOW) == HELD    # room again


def test_free_destinations_pass_over_the_limit():
    gw = Seller(pricing(max_pending_proposals=2, prefix_prices=(("198.19.0.0/16", 0),)))
    spray(gw, 10)
    assert gw.outbound(PEER, dst(65536 + 5), 60, ip4(dst(65536 + 5)), NOW) == FORWARD


def test_request_over_the_limit_gets_no_proposal():
    gw = Seller(pricing(max_pending_proposals=3))
    spray(gw, 3)
    gw.take_outgoing()
    gw.on_message(PEER, m.Request("198.18.200.1"), NOW)
    assert not [x for _, x in gw.take_outgoing() if isinstance(x, m.Propose)]
    assert gw.status(NOW)["peers"][PEER.hex()]["drops_proposal_limit"] == 1


def test_held_packets_per_flow_and_gateway_wide():
    gw = Seller(pricing())
    d = dst(7)
    rs = [gw.outbound(PEER, d, 60, ip4(d), NOW) for _ in range(100)]
    assert rs.count(HELD) == gw.pricing.held_max_flow_packets == 16

    gw = Seller(pricing(held_total_max_bytes=10 * 1000))
    for k in range(3):
        peer = bytes([k + 2]) * 32
        for i in range(5):
            gw.outbound(peer, dst(i), 1000, ip4(dst(i), 1000), NOW)
    held = sum(p["held_packets"] for p in gw.status(NOW)["peers"].values())
    assert held == 10 and gw.held_total_bytes == 10_000
    gw.poll(NOW + 60)                                   # proposals withdrawn, held dropped
    assert gw.held_total_bytes == 0


def test_unpaid_contracts_bound_new_proposals():
    gw = Seller(pricing(max_unpaid_contracts=3, grace_time_s=30))
    for i in range(5):                   # each proposal accepted at once, never paid
        assert gw.outbound(PEER, dst(i), 60, ip4(dst(i)), NOW) == (HELD if i < 3 else DROP)
        for _, msg in gw.take_outgoing():
            if isinstance(msg, m.Propose):
                gw.on_message(PEER, m.Accept(msg.contract_id), NOW)
    st = gw.status(NOW)["peers"][PEER.hex()]
    assert st["unpaid_contracts"] == 3 and st["open_proposals"] == 0 and st["drops_proposal_limit"] == 2
    again = Seller(pricing(max_unpaid_contracts=3, grace_time_s=30))
    again.restore(gw.snapshot(), NOW)           # a restart remembers who owes what
    assert again.status(NOW)["peers"][PEER.hex()]["unpaid_contracts"] == 3
    paid = next(c["contract_id"] for c in gw.contracts(PEER, NOW))
    gw.payment_confirmed(paid, NOW)
    assert gw.status(NOW)["peers"][PEER.hex()]["unpaid_contracts"] == 2
    assert gw.outbound(PEER, dst(9), 60, ip4(dst(9)), NOW) == HELD     # room again
    gw.poll(NOW + 31)                    # the rest are revoked at the end of their grace
    assert gw.status(NOW + 31)["peers"][PEER.hex()]["unpaid_contracts"] == 0
