"""A burst passes whole only if it fits: a contract never overshoots by more than one packet."""

from types import SimpleNamespace

from tunnelgate.meter import FORWARD, MISS, Flow, GatewayMeter

PEER, DST = b"p" * 32, bytes([198, 18, 2, 2])


def meter_with_contract(left: int):
    m = GatewayMeter()
    f = Flow(PEER, DST, 32, "198.18.2.2/32")
    f.current = SimpleNamespace(used=1000, stop_bytes=1000 + left, stop_at=100.0, up=0, down=0)
    m.peers[PEER] = {DST: f}
    return m, f.current


def test_burst_that_fits_is_metered_at_once():
    m, c = meter_with_contract(left=3000)
    assert m.down(PEER, DST, 3000, 1.0, True) == FORWARD
    assert c.used == 4000 and c.down == 3000


def test_burst_that_does_not_fit_is_not_metered():
    m, c = meter_with_contract(left=2999)
    assert m.down(PEER, DST, 3000, 1.0, True) == MISS
    assert m.up(PEER, DST, 3000, 1.0, True) == MISS
    assert c.used == 1000
    # packet by packet: the one that crosses the limit passes, the next does not
    assert [m.down(PEER, DST, 1500, 1.0) for _ in range(3)] == [FORWARD, FORWARD, MISS]
    assert c.used == 4000


def test_expired_contract_passes_nothing():
    m, c = meter_with_contract(left=10_000)
    assert m.down(PEER, DST, 100, 100.0, True) == MISS
    assert m.down(PEER, DST, 100, 100.0) == MISS


def test_client_burst_fits_only_within_its_contract():
    from tunnelgate.protocol.buyer import Buyer, ClientPolicy
    cl = Buyer(ClientPolicy(max_price=1_000_000))
    assert cl.fits(DST, 10**9, 0.0)          # no contract for it: nothing to split
    f = cl._flow(b"gateway key", "198.18.2.2/32")
    f.current = SimpleNamespace(used=1000, stop_bytes=4000, stop_at=100.0)
    assert cl.fits(DST, 3000, 1.0) and not cl.fits(DST, 3001, 1.0) and not cl.fits(DST, 1, 100.0)
