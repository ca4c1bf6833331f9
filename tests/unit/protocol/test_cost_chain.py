"""The cost chain on the wire and at the buyer: strictly validated, checked against the
proposal, kept with the contract."""

import base64
import json

import pytest

from tunnelgate.money import parse_price
from tunnelgate.protocol import chain as ch
from tunnelgate.protocol import events as E
from tunnelgate.protocol import messages as m
from tunnelgate.protocol.buyer import Buyer, ClientPolicy
from tunnelgate.protocol.seller import Pricing, Seller

ME, GW, R1, R2 = (bytes([i]) * 32 for i in (1, 2, 3, 4))
NOW = 1_000_000.0
DST = "198.18.2.2/32"


def propose(price, chain, cid="k1"):
    return m.Propose(cid, DST, price, 100, 600, ("dummy",), "acct", 1, 5, 50, chain)


def test_chain_roundtrips_on_the_wire_as_base64_keys_and_prices():
    p = propose(500, ((GW, 400), (R1, 500)))
    raw = m.encode(p)
    assert json.loads(raw)["chain"] == [{"public_key": base64.b64encode(GW).decode(), "price_per_kb": 400},
                                        {"public_key": base64.b64encode(R1).decode(), "price_per_kb": 500}]
    assert m.decode(raw) == p
    q = m.Quote(DST, 500, 100, 60, ("dummy",), 5, 50, None, ((R1, 500),))
    assert m.decode(m.encode(q)) == q
    assert m.decode(m.encode(propose(500, None))).chain is None      # a seller from before chains


def _raw_with(chain) -> bytes:
    d = json.loads(m.encode(propose(500, ((GW, 500),))))
    d["chain"] = chain
    return json.dumps(d).encode()


@pytest.mark.parametrize("chain", [
    [],                                                              # empty
    [{"public_key": base64.b64encode(bytes([i]) * 32).decode(), "price_per_kb": 1} for i in range(9)],
    [{"public_key": base64.b64encode(b"k" * 31).decode(), "price_per_kb": 1}],     # short key
    [{"public_key": "not base64!", "price_per_kb": 1}],
    [{"public_key": base64.b64encode(GW).decode().rstrip("="), "price_per_kb": 1}],  # not canonical
    [{"public_key": base64.b64encode(GW).decode(), "price_per_kb": True}],
    [{"public_key": base64.b64encode(GW).decode(), "price_per_kb": -1}],
    [{"public_key": base64.b64encode(GW).decode(), "price_per_kb": 1, "x": 1}],
    [{"public_key": base64.b64encode(GW).decode()}],
    [[base64.b64encode(GW).decode(), 1]],
    "chain",
])
def test_malformed_chains_are_refused_by_the_decoder(chain):
    with pytest.raises(m.ProtocolError):
        m.decode(_raw_with(chain))
    assert m.decode(_raw_with([{"public_key": base64.b64encode(GW).decode(), "price_per_kb": 500}]))


def _buyer():
    return Buyer(ClientPolicy(max_price=parse_price("10"), data_renewal_kb=0, time_renewal_s=0), own_key=ME)


@pytest.mark.parametrize("chain,why", [
    (((GW, 400), (R1, 499)), "asks"),                 # the total does not add up
    (((GW, 400), (R2, 450)), "not at the seller"),    # last hop is not who proposes
    (((GW, 400), (GW, 450), (R1, 500)), "twice"),     # a loop
    (((ME, 400), (R1, 500)), "this node itself"),     # through the buyer itself
    (tuple((bytes([9, i]) * 16, 500) for i in range(8)) + ((R1, 500),), "more than 8"),
])
def test_buyer_rejects_a_chain_that_does_not_add_up(chain, why):
    b = _buyer()
    b.on_message(R1, propose(500, chain), NOW)
    [(peer, rej)] = b.take_outgoing()
    assert peer == R1 and isinstance(rej, m.Reject) and why in rej.reason
    assert rej.price is None                   # no counter-offer: no price makes it add up
    assert b.books[R1].chain_rejected == 1 and b.contracts() == [] and b.status(NOW)["chain_rejected"] == 1
    assert why in b.status(NOW)["destinations"][DST]["reason"]
    [ev] = [e for e in b.take_events() if type(e) is E.Rejected]
    assert why in ev.reason


def test_buyer_keeps_the_accepted_chain_with_the_contract_and_its_snapshot():
    b = _buyer()
    chain = ((GW, 400), (R2, 450), (R1, 500))
    b.on_message(R1, propose(500, chain), NOW)
    assert isinstance(b.take_outgoing()[0][1], m.Accept)
    [view] = b.contracts(NOW)
    assert view["chain"] == [{"public_key": base64.b64encode(k).decode(), "price_per_kb": p} for k, p in chain]
    again = _buyer()
    again.restore(b.snapshot(), NOW)
    assert again.contracts(NOW)[0]["chain"] == view["chain"]


def test_a_proposal_without_a_chain_is_its_seller_alone():
    b = _buyer()
    b.on_message(GW, propose(500, None), NOW)
    assert isinstance(b.take_outgoing()[0][1], m.Accept)
    assert b.contracts(NOW)[0]["chain"] == ch.view(((GW, 500),))


def test_plain_gateway_proposes_and_quotes_a_chain_of_itself():
    gw = Seller(Pricing(default_price=parse_price("0.5"), floor_price=parse_price("0.2")), own_key=GW)
    gw.on_message(ME, m.QuoteRequest(DST), NOW)
    [(_, q)] = gw.take_outgoing()
    assert q.chain == ((GW, q.price),)
    gw.on_message(ME, m.Request(DST), NOW)
    [(_, p)] = gw.take_outgoing()
    assert isinstance(p, m.Propose) and p.chain == ((GW, parse_price("0.5")),)
    # the client's counter: the next round's chain carries the new price
    gw.on_message(ME, m.Reject(p.contract_id, "too dear", price=parse_price("0.3")), NOW)
    [(_, p2)] = gw.take_outgoing()
    assert p2.price == parse_price("0.3") and p2.chain == ((GW, parse_price("0.3")),)
    b = _buyer()
    b.on_message(GW, q, NOW)
    [ev] = [e for e in b.take_events() if type(e) is E.Quote]
    assert ev.chain == ((base64.b64encode(GW).decode(), q.price),) and ev.chain_problem == ""
    assert ev.acceptable


def test_a_quote_whose_chain_does_not_add_up_is_not_acceptable():
    b = _buyer()
    b.on_message(R1, m.Quote(DST, 500, 100, 60, ("dummy",), 5, 50, None, ((GW, 400), (R1, 450))), NOW)
    [ev] = [e for e in b.take_events() if type(e) is E.Quote]
    assert not ev.acceptable and "asks" in ev.chain_problem
