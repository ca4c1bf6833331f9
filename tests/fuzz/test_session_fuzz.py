"""Mutated, truncated and spliced datagrams never make receive() raise, and
never authenticate. Deterministic: a seeded random.Random drives everything."""

import hashlib
import random

import pytest

from tunnelgate.session import (
    CONTROL,
    DATA,
    HANDSHAKE_DONE,
    KEEPALIVE,
    RAND_BYTES,
    Initiator,
    Responder,
    Timing,
    public_key,
)

GW = hashlib.sha256(b"fuzz gateway").digest()
CL = hashlib.sha256(b"fuzz client").digest()
CASES = 6000


class Rand:
    def __init__(self, seed):
        self.n = 0
        self.seed = seed

    def __call__(self) -> bytes:
        self.n += 1
        return hashlib.shake_256(b"%d/%d" % (self.seed, self.n)).digest(RAND_BYTES)


def mutate(rng: random.Random, dg: bytes, corpus: list[bytes]) -> bytes:
    b = bytearray(dg)
    op = rng.randrange(9)
    if op == 0:  # flip a few bits
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b) * 8)
            b[i // 8] ^= 1 << (i % 8)
    elif op == 1:  # truncate
        del b[rng.randrange(len(b)):]
    elif op == 2:  # extend
        b += rng.randbytes(rng.randint(1, 64))
    elif op == 3:  # overwrite a byte
        b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 4:  # change the type / reserved bytes
        b[rng.randrange(4)] = rng.choice([0, 1, 2, 3, 4, 5, 6, 255])
    elif op == 5:  # splice two valid datagrams
        other = rng.choice(corpus)
        cut = rng.randrange(min(len(b), len(other)) + 1)
        b = b[:cut] + bytearray(other[cut:])
    elif op == 6:  # random bytes behind a valid header
        b = b[:rng.choice([4, 8, 12, 16])] + bytearray(rng.randbytes(rng.randrange(120)))
    elif op == 7:  # tiny datagrams
        b = bytearray(rng.randbytes(rng.randrange(20)))
    else:  # swap two ranges
        i, j = sorted(rng.sample(range(len(b)), 2))
        b[i:j] = b[i:j][::-1]
    return bytes(b)


def as_buffer(rng, dg):
    return rng.choice([dg, bytearray(dg), memoryview(dg)])


@pytest.mark.parametrize("cipher", ["chacha", "aesgcm"])
def test_receive_never_raises(cipher):
    rng = random.Random(20240611)
    rand = Rand(1 if cipher == "chacha" else 2)
    timing = Timing()
    now, wall = 50.0, 10**18
    client = Initiator(CL, public_key(GW), timing, cipher=cipher)
    gw = Responder(GW, timing, cipher=cipher)

    init = client.begin(now, wall, rand(), b"hi")
    hs = gw.receive(init, now, "c")
    resp = gw.accept(hs, now, rand(), b"addr")
    assert client.receive(resp, now) == (HANDSHAKE_DONE, b"addr")
    # A second pending handshake so RESP mutations hit live state too.
    init2 = client.begin(now, wall, rand(), b"hi")
    hs2 = gw.receive(init2, now, "c")
    resp2 = gw.accept(hs2, now, rand(), b"addr2")
    corpus = [init, resp, init2, resp2]
    for kind in (DATA, KEEPALIVE, CONTROL):
        corpus.append(client.seal(kind, b"" if kind == KEEPALIVE else rng.randbytes(60), now))
        corpus.append(gw.seal(public_key(CL), kind, b"" if kind == KEEPALIVE else rng.randbytes(60), now))

    seen_valid = set(corpus)
    for _ in range(CASES):
        dg = rng.choice(corpus)
        bad = mutate(rng, dg, corpus)
        if bad in seen_valid:
            continue
        a = gw.receive(as_buffer(rng, bad), now, "attacker")
        b = client.receive(as_buffer(rng, bad), now)
        assert a is None, (dg, bad, a)
        assert b is None, (dg, bad, b)
        now += 0.0001

    assert gw.endpoint(public_key(CL)) == "c"
    assert all(addr == "c" for addr, _ in gw.poll(now))  # nothing to the attacker
    assert sum(gw.stats.values()) - gw.stats["handshakes"] > CASES * 0.9
    # The sessions still work after the barrage, including the pending
    # handshake whose RESP was mutated thousands of times.
    assert client.receive(resp2, now) == (HANDSHAKE_DONE, b"addr2")
    up = client.seal(DATA, b"alive", now)
    assert gw.receive(up, now, "c") == (public_key(CL), DATA, b"alive")
    down = gw.seal(public_key(CL), DATA, b"alive too", now)
    assert client.receive(down, now) == (DATA, b"alive too")


def test_random_bytes_never_raise():
    rng = random.Random(99)
    gw = Responder(GW)
    client = Initiator(CL, public_key(GW))
    client.begin(0.0, 1, Rand(3)())
    for _ in range(CASES):
        n = rng.choice([0, 1, 3, 4, 7, 8, 11, 12, 15, 16, 31, 32, 47, 48, 95, 96, 97, 200])
        dg = bytes([rng.randrange(7), 0, 0, 0])[: min(4, n)] + rng.randbytes(max(0, n - 4))
        assert gw.receive(dg, 0.0, "x") is None
        assert client.receive(dg, 0.0) is None


def test_receive_groups_with_mutated_chunk_runs_never_raise_nor_accept_a_forgery():
    """GRO buffers of chunk runs with mutated, replayed, spliced datagrams and
    any segment size: no exception, only sealed payloads come out, each once."""
    from tunnelgate.offload.chunks import DATA_CHUNK
    rng = random.Random(7)
    rand = Rand(5)
    now, wall = 50.0, 10**18
    client = Initiator(CL, public_key(GW), Timing(), cipher="aesgcm")
    gw = Responder(GW, Timing(), cipher="aesgcm")
    hs = gw.receive(client.begin(now, wall, rand(), b"hi"), now, "c")
    client.receive(gw.accept(hs, now, rand(), b"addr"), now)
    peer = public_key(CL)
    sealed_up, sealed_down, got_up, got_down = set(), set(), [], []
    history = []
    for _ in range(300):
        size = rng.choice([40, 300])
        chunks = [rng.randbytes(size) for _ in range(rng.randint(1, 40))]
        up = client.seal_batch(DATA_CHUNK, chunks, now)
        down = gw.seal_batch(peer, DATA_CHUNK, chunks, now)
        sealed_up.update(chunks)
        sealed_down.update(chunks)
        history += up
        for dgs, receive, got, at in ((up, lambda g: gw.receive_groups(g, now), got_up, 1),
                                      (down, lambda g: client.receive_groups(g, now), got_down, 1)):
            dgs = list(dgs)
            for _ in range(rng.randint(0, 3)):
                if not dgs:
                    break
                i = rng.randrange(len(dgs))
                op = rng.random()
                if op < 0.6:
                    dgs[i] = mutate(rng, dgs[i], history[-200:])
                elif op < 0.8:
                    dgs.insert(i, rng.choice(history[-200:]))     # a replay in the run
                else:
                    del dgs[i]
            buf = b"".join(dgs)
            seg = size + 32 if rng.random() < 0.7 else rng.choice([rng.randint(1, 400), len(buf) + 5])
            for res in receive([(as_buffer(rng, buf), seg, "c")]):
                if isinstance(res, tuple) and res[at] & 0xFF == DATA_CHUNK:
                    assert type(res[at + 1]) is list
                    got += res[at + 1]
        now += 0.001
    for res in gw.receive_groups([(b"", 1, "c"), (bytes(40), 7, "c")], now):
        raise AssertionError(f"junk opened: {res}")
    # only what was sealed came out, never twice (each chunk is random: duplicates are replays)
    assert set(got_up) <= sealed_up and len(got_up) == len(set(got_up)) > 1000
    assert set(got_down) <= sealed_down and len(got_down) == len(set(got_down)) > 1000
    assert gw.endpoint(peer) == "c"
    up = client.seal(DATA, b"alive", now)
    assert gw.receive(up, now, "c") == (peer, DATA, b"alive")
