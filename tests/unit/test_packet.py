import random
import struct

from tunnelgate import packet as pk


def v4(src="198.18.1.2", dst="198.18.2.7", total=60, buflen=None):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0,
                      pk.addr_bytes(src), pk.addr_bytes(dst))
    return hdr + bytes((buflen or total) - 20)


def v6(src="2001:db8::1", dst="2001:db8::2", payload=20):
    hdr = struct.pack("!IHBB16s16s", 6 << 28, payload, 17, 64, pk.addr_bytes(src), pk.addr_bytes(dst))
    return hdr + bytes(payload)


def test_ipv4():
    p = v4(total=100)
    assert pk.parse(p) == (4, pk.addr_bytes("198.18.1.2"), pk.addr_bytes("198.18.2.7"), 100)
    assert pk.dst_and_length(p) == (pk.addr_bytes("198.18.2.7"), 100)
    assert pk.src_and_length(p) == (pk.addr_bytes("198.18.1.2"), 100)
    # length comes from the header, trailing bytes (padding) are not metered
    assert pk.parse(v4(total=40, buflen=64))[3] == 40


def test_ipv6():
    p = v6(payload=20)
    assert pk.parse(p) == (6, pk.addr_bytes("2001:db8::1"), pk.addr_bytes("2001:db8::2"), 60)


def test_malformed():
    assert pk.parse(b"") is None
    assert pk.parse(v4(total=100)[:50]) is None           # truncated
    assert pk.parse(b"\x45" + bytes(10)) is None
    assert pk.parse(b"\x55" + bytes(40)) is None           # version 5
    assert pk.parse(b"\x44" + bytes(40)) is None           # IHL < 5
    assert pk.parse(v6()[:39]) is None


def test_prefixes():
    assert pk.mask(pk.addr_bytes("198.18.2.77"), 24) == pk.addr_bytes("198.18.2.0")
    assert pk.parse_prefix("198.18.2.0/24") == (pk.addr_bytes("198.18.2.0"), 24)
    assert pk.prefix_text(pk.addr_bytes("198.18.2.7"), 32) == "198.18.2.7/32"


def test_fuzz_never_raises():
    rng = random.Random(7)
    for i in range(20000):
        n = rng.randrange(0, 80)
        b = bytes(rng.randrange(256) for _ in range(n))
        if i % 2:
            b = bytes([rng.choice((0x45, 0x46, 0x60, 0x4f))]) + b
        r = pk.parse(b)
        assert r is None or (r[0] in (4, 6) and r[3] <= len(b))
        pk.dst_and_length(b)
        pk.src_and_length(b)
        try:
            pk.parse_strict(b)
        except pk.PacketError:
            pass
