from tunnelgate import packet as pk
from tunnelgate.meter import FORWARD, MISS, ClientMeter, Flow, GatewayMeter, usage_disagrees
from tunnelgate.protocol.contract import Contract, State
from tunnelgate.protocol.terms import Terms

PEER = b"p" * 32


def _contract(limit_kb=2, stop_at=100.0):
    c = Contract(Terms("c1", "x", b"", 32, 1, limit_kb, 100), PEER)
    c.state, c.expires_at, c.grace_until = State.PAID, stop_at, stop_at
    c.arm(True)
    return c


def test_gateway_meter_scope_and_overshoot():
    m = GatewayMeter(plen4=24)
    a = pk.addr_bytes("198.18.2.7")
    key = m.key(a)
    assert key == pk.addr_bytes("198.18.2.0") and m.key(a) is key      # cached
    assert m.up(PEER, a, 100, 0.0) == MISS
    f = m.peers.setdefault(PEER, {})[key] = Flow(PEER, key, 24, "198.18.2.0/24")
    f.current = c = _contract(limit_kb=2)
    assert m.up(PEER, pk.addr_bytes("198.18.2.99"), 1500, 1.0) == FORWARD
    assert m.down(PEER, a, 400, 1.0) == FORWARD
    assert m.up(PEER, a, 1500, 1.0) == FORWARD        # 1900 < 2000: allowed, overshoots once
    assert m.up(PEER, a, 1, 1.0) == MISS
    assert (c.used, c.up, c.down) == (3400, 3000, 400)
    c.used = 0
    assert m.up(PEER, a, 1, 100.0) == MISS            # time over


def test_free_flow():
    m = GatewayMeter()
    a = pk.addr_bytes("198.18.9.1")
    f = m.peers.setdefault(PEER, {})[a] = Flow(PEER, a, 32, "198.18.9.1/32")
    f.free = True
    assert m.up(PEER, a, 10, 0.0) == FORWARD and f.free_bytes == 10


def test_client_meter_longest_prefix():
    cm = ClientMeter()
    f24 = Flow(b"", pk.addr_bytes("198.18.2.0"), 24, "198.18.2.0/24")
    f32 = Flow(b"", pk.addr_bytes("198.18.2.7"), 32, "198.18.2.7/32")
    cm.table(4, 24)[f24.key] = f24
    cm.table(4, 32)[f32.key] = f32
    assert cm.find(pk.addr_bytes("198.18.2.7")) is f32
    assert cm.find(pk.addr_bytes("198.18.2.8")) is f24
    assert cm.find(pk.addr_bytes("198.18.3.8")) is None


def test_usage_tolerance_exact():
    assert not usage_disagrees(100_000, 101_000, 1, 100, 0)     # 1% of 101000 = 1010
    assert usage_disagrees(100_000, 102_000, 1, 100, 0)
    assert not usage_disagrees(0, 16_000, 1, 100, 16_000)       # slack
    assert usage_disagrees(0, 16_001, 0, 1, 16_000)
