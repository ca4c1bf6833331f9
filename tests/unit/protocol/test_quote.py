"""QUOTE: the gateway's terms for a destination, with no contract and no state."""

from tunnelgate.protocol import events as E
from tunnelgate import packet as pk
from tunnelgate.protocol import messages as m
from tunnelgate.protocol.buyer import Buyer, ClientPolicy
from tunnelgate.protocol.seller import Seller, Pricing

PEER = b"\x01" * 32


def test_quote_roundtrip_and_strictness():
    q = m.Quote("198.18.2.0/24", 500_000, 1000, 60, ("dummy",), 30, 100)
    assert m.decode(m.encode(q)) == q
    assert m.decode(m.encode(m.QuoteRequest("198.18.2.2/32"))) == m.QuoteRequest("198.18.2.2/32")


def test_gateway_quotes_scope_price_and_grace_without_creating_state():
    gw = Seller(Pricing(default_price=500_000, floor_price=200_000, scope=24, contract_kb=1000,
                               prefix_prices=(("198.18.9.0/24", 0),)))
    gw.on_message(PEER, m.QuoteRequest("198.18.2.2/32"), 0.0)
    [(peer, q)] = gw.take_outgoing()
    assert peer == PEER and q.destination == "198.18.2.0/24" and q.price == 500_000 and q.reason is None
    assert q.limit_kb == 1000 and q.grace_s == 30
    assert gw.contracts() == [] and gw.meter.peers.get(PEER, {}) == {}
    gw.on_message(PEER, m.QuoteRequest("198.18.9.7/32"), 0.0)
    [(_, free)] = gw.take_outgoing()
    assert free.price == 0 and "free" in free.reason


def test_client_turns_a_quote_into_an_event_with_its_verdict():
    cl = Buyer(ClientPolicy(max_price=400_000))
    cl.request_quote(PEER, "198.18.2.2/32")
    assert cl.take_outgoing() == [(PEER, m.QuoteRequest("198.18.2.2/32"))]
    cl.on_message(PEER, m.Quote("198.18.2.2/32", 500_000, 1000, 60, ("dummy",), 30, 100), 0.0)
    [ev] = [e for e in cl.take_events() if e.kind == E.Quote.kind]
    assert ev.acceptable is False and ev.amount_msat == 500 and ev.destination == "198.18.2.2/32"
    assert cl.contracts() == []
    assert pk.parse_prefix(ev.destination)[1] == 32
