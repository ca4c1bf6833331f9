import json
import random

import pytest

from tunnelgate.protocol import messages as m

SAMPLES = [
    m.Propose("c1", "198.18.2.7/32", 250_000, 1000, 600, ("cashu", "dummy"), "acct", 1, 30, 100),
    m.Accept("c1"),
    m.Accept("c1", True),
    m.Reject("c1", "too expensive", price=200_000),
    m.Reject("c1", "budget"),
    m.Reject("c1", "smaller", limit_kb=10, time_s=60),
    m.Request("198.18.2.0/24"),
    m.Request("198.18.2.7/32", 250_000),
    m.Pay("c1", 250, "cashu", "cashuAbc"),
    m.Paid("c1"),
    m.Paid("c1", 150_000),
    m.Paid("c1", 0),
    m.PaymentFailed("c1", "spent token"),
    m.Revoke("c1", "payment not confirmed"),
    m.Usage.one("c1", 1234, 5678, True),
    m.Usage((("c1", 1234, 5678, False), ("c2", 0, 2**64 - 1, True))),
    m.UsageRequest("c1"),
    m.NoDeal("2001:db8::/48", "below floor", 60, "c2"),
    m.NoDeal("198.18.2.7/32", "x", 0),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda x: x.TYPE)
def test_roundtrip(msg):
    raw = m.encode(msg)
    assert len(raw) < 400
    assert m.decode(raw) == msg


@pytest.mark.parametrize("raw", [
    b'{"t":"NOPE"}', b'{"contract_id":"c1"}', b'[]', b'"x"', b'\xff\xfe',
    b'{"t":"ACCEPT","contract_id":"c1","extra":1}',
    b'{"t":"ACCEPT","contract_id":"c1","credit":1}',
    b'{"t":"ACCEPT","contract_id":"c1","credit":"yes"}',
    b'{"t":"PAID","contract_id":"c1","credit_msat":-1}',
    b'{"t":"PAID","contract_id":"c1","credit_msat":true}',
    b'{"t":"PAID","contract_id":"c1","credit_msat":1.0}',
    b'{"t":"PAID","contract_id":"c1","credit_msat":"5"}',
    b'{"t":"ACCEPT"}',
    b'{"t":"ACCEPT","contract_id":""}',
    b'{"t":"ACCEPT","contract_id":"c1","contract_id":"c2"}',
    b'{"t":"USAGE","contract_id":"c1","up":1.5,"down":0,"final":false}',
    b'{"t":"USAGE","contract_id":"c1","up":true,"down":0,"final":false}',
    b'{"t":"USAGE","contract_id":"c1","up":-1,"down":0,"final":false}',
    b'{"t":"USAGE","contract_id":"c1","up":NaN,"down":0,"final":false}',
    b'{"t":"USAGE","contract_id":"c1","up":0,"down":0,"final":1}',
    b'{"t":"REQUEST","destination":"198.18.2.7/24"}',
    b'{"t":"REQUEST","destination":"example.com"}',
    b'{"t":"PAY","contract_id":"c1","amount_msat":1,"method":"x","proof":' + b'"' + b"a" * 5000 + b'"}',
    b"[" * 3000 + b"]" * 3000,
])
def test_strict_rejects(raw):
    with pytest.raises(m.ProtocolError):
        m.decode(raw)


def test_fuzz_only_protocol_error():
    rng = random.Random(5)
    base = [m.encode(s) for s in SAMPLES]
    for _ in range(5000):
        b = bytearray(rng.choice(base))
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(3)
            i = rng.randrange(len(b) + 1)
            if op == 0 and b:
                b[i % len(b)] = rng.randrange(256)
            elif op == 1:
                b[i:i] = bytes([rng.randrange(32, 127)])
            elif b:
                del b[i % len(b)]
        try:
            m.decode(bytes(b))
        except m.ProtocolError:
            pass


def test_encode_refuses_invalid():
    with pytest.raises(m.ProtocolError):
        m.encode(m.Accept(""))
    with pytest.raises(m.ProtocolError):
        m.encode(m.Usage.one("c1", -5, 0))
    with pytest.raises(m.ProtocolError):
        m.encode(m.Usage(()))


def test_compact_json():
    raw = m.encode(m.Accept("c1"))
    assert raw == b'{"t":"ACCEPT","contract_id":"c1"}'
    assert json.loads(raw)["t"] == "ACCEPT"


def test_usage_items_strict():
    ok = b'{"t":"USAGE","items":[["c1",1,2,false],["c2",3,4,true]]}'
    assert m.decode(ok) == m.Usage((("c1", 1, 2, False), ("c2", 3, 4, True)))
    for bad in (b'{"t":"USAGE","items":[]}', b'{"t":"USAGE","items":[["c1",1,2]]}',
                b'{"t":"USAGE","items":[["c1",1,2,0]]}', b'{"t":"USAGE","items":[["",1,2,false]]}',
                b'{"t":"USAGE","items":[["c1",-1,2,false]]}', b'{"t":"USAGE","items":"c1"}',
                b'{"t":"USAGE","items":[{"c1":1}]}', b'{"t":"USAGE","contract_id":"c1","up":1,"down":2}',
                b'{"t":"USAGE","items":[' + b",".join([b'["c1",1,2,false]'] * (m.MAX_USAGE_ITEMS + 1)) + b"]}"):
        with pytest.raises(m.ProtocolError):
            m.decode(bad)


def test_usage_worst_case_fits():
    items = tuple(("x" * m.MAX_ID, 2**64 - 1, 2**64 - 1, False) for _ in range(m.MAX_USAGE_ITEMS))
    assert len(m.encode(m.Usage(items))) <= m.MAX_MESSAGE
