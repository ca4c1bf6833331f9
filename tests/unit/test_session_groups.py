"""receive_groups: datagrams as UDP GRO hands them over (buffers of equal-size
segments) give exactly what receive() gives one by one, chunk runs folded into
one result per run; the folding (decrypt and replay check inline) keeps every
drop and its counter: losses, replays, flipped bits, cut and junk datagrams,
other senders' addresses, data between chunks."""

from __future__ import annotations

import os
import random

import pytest

from tunnelgate.offload.chunks import DATA_CHUNK, chunk_kind
from tunnelgate.session import CONTROL, DATA, Handshake

from session_lab import CL_PUB, GW_PUB, Lab


def _seal_burst(seal, rnd) -> list[bytes]:
    """One burst's chunk datagrams (the session does not look inside chunks);
    the last may be shorter, as a burst's last chunk is."""
    count = rnd.randrange(1, 60)
    size = rnd.choice([200, 1200])
    chunks = [os.urandom(size) for _ in range(count - 1)] + [os.urandom(rnd.randrange(20, size + 1))]
    return seal(DATA_CHUNK, chunks)


def _stream(seal, rnd, n_bursts=40, other=0.02) -> list[tuple[bytes, str]]:
    out = []
    sent = []
    for _ in range(n_bursts):
        r = rnd.random()
        if r < 0.15:
            dgs = [seal(rnd.choice([DATA, CONTROL]), [os.urandom(rnd.randrange(1, 300))])[0]]
        else:
            dgs = _seal_burst(seal, rnd)
        for dg in dgs:
            r = rnd.random()
            sent.append(dg)
            if r < 0.05:
                continue                                    # lost
            if r < 0.08:
                dg = bytearray(dg)
                dg[rnd.randrange(len(dg))] ^= 1 << rnd.randrange(8)
                dg = bytes(dg)                              # flipped bit
            elif r < 0.10:
                # replayed: an earlier datagram of the same type word, so that a
                # replayed chunk may stand where its run expects the next one
                same = [d for d in sent[:-1] if d[:4] == dg[:4]]
                dg = rnd.choice(same or sent)
            elif r < 0.11:
                dg = dg[:rnd.randrange(40)]                 # cut
            elif r < 0.12:
                out.append((os.urandom(rnd.randrange(60)), "c1"))      # junk before it
            out.append((dg, "c2" if rnd.random() < other else "c1"))
    return out


def gro(stream, rnd) -> list[tuple[bytes, int, str]]:
    """What UDP GRO makes of a stream: consecutive datagrams from one address
    of one size in one buffer, a shorter one ending it; cut at random too."""
    groups = []
    cur = None
    for dg, addr in stream:
        if (cur is not None and not cur[3] and cur[2] == addr and 0 < len(dg) <= cur[1]
                and rnd.random() < 0.95):
            cur[0].append(dg)
            cur[3] = len(dg) < cur[1]
        else:
            cur = [[dg], len(dg) or 1, addr, not dg]
            groups.append(cur)
    return [(b"".join(c[0]), c[1], c[2]) for c in groups]


def flat(results, chunk_at):
    """receive_groups results with each run expanded to one result per chunk."""
    out = []
    for r in results:
        if isinstance(r, Handshake) or not r[chunk_at] & 0xFF == DATA_CHUNK:
            out.append(r)
            continue
        kind, payloads = r[chunk_at], r[chunk_at + 1]
        assert type(payloads) is list and payloads
        for i, p in enumerate(payloads):
            out.append(r[:chunk_at] + (kind + (i << 8), p) + r[chunk_at + 2:])
    return out


@pytest.mark.parametrize("seed", range(8))
def test_gateway_receive_groups_equals_receive_one_by_one(seed):
    one, many = Lab().connect(), Lab().connect()          # same inputs, same keys
    rnd = random.Random(seed)
    stream = _stream(lambda k, ps: one.client.seal_batch(k, ps, one.now), rnd)
    want = [r for r in (one.gw.receive(dg, one.now, a) for dg, a in stream) if r is not None]
    got = many.gw.receive_groups(gro(stream, rnd), many.now)
    assert flat(got, 1) == want
    assert many.gw.stats == one.gw.stats
    assert one.gw.stats["bad_mac"] and one.gw.stats["replay"] and one.gw.stats["malformed"]
    assert many.gw.endpoint(CL_PUB) == one.gw.endpoint(CL_PUB)
    # runs were folded: the inline path ran
    assert max(len(r[2]) for r in got if r[1] & 0xFF == DATA_CHUNK) > 10


@pytest.mark.parametrize("seed", range(8))
def test_client_receive_groups_equals_receive_one_by_one(seed):
    one, many = Lab().connect(), Lab().connect()
    rnd = random.Random(seed)
    stream = _stream(lambda k, ps: one.gw.seal_batch(CL_PUB, k, ps, one.now), rnd, other=0.1)
    opened = [(r, a) for r, a in ((one.client.receive(dg, one.now), a) for dg, a in stream) if r is not None]
    got = many.client.receive_groups(gro(stream, rnd), many.now)
    assert flat(got, 1) == [(GW_PUB,) + r for r, _ in opened]     # as the gateway's, like a responder's
    assert many.client.stats == one.client.stats
    assert many.client.source == opened[-1][1]          # where the latest authenticated one came from
    assert max(len(r[2]) for r in got if r[1] & 0xFF == DATA_CHUNK) > 10


def test_a_run_ends_at_its_buffer_and_at_anything_between_its_chunks():
    lab = Lab().connect()
    chunks = [bytes([i]) * 100 for i in range(6)]
    dgs = lab.client.seal_batch(DATA_CHUNK, chunks, lab.now)
    data = lab.client.seal(DATA, b"x" * 100, lab.now)          # the same length as a chunk datagram
    assert len(data) == len(dgs[0])
    seg = len(dgs[0])
    groups = [(b"".join(dgs[:2] + [data] + dgs[2:4]), seg, "c1"), (b"".join(dgs[4:]), seg, "c9")]
    got = lab.gw.receive_groups(groups, lab.now)
    assert [(r[1], r[2]) for r in got] == [
        (chunk_kind(0, 6), chunks[:2]), (DATA, b"x" * 100),
        (chunk_kind(2, 6), chunks[2:4]), (chunk_kind(4, 6), chunks[4:])]
    # the second buffer came from another address: the peer's endpoint follows it
    assert lab.gw.endpoint(CL_PUB) == "c9"


def test_the_client_ends_a_run_at_anything_between_its_chunks_too():
    lab = Lab().connect()
    chunks = [bytes([i]) * 100 for i in range(4)]
    dgs = lab.gw.seal_batch(CL_PUB, DATA_CHUNK, chunks, lab.now)
    data = lab.gw.seal(CL_PUB, CONTROL, b"y" * 100, lab.now)
    got = lab.client.receive_groups([(b"".join(dgs[:2] + [data] + dgs[2:]), len(data), "gw")], lab.now)
    assert got == [(GW_PUB, chunk_kind(0, 4), chunks[:2]), (GW_PUB, CONTROL, b"y" * 100),
                   (GW_PUB, chunk_kind(2, 4), chunks[2:])]
    assert lab.client.source == "gw"


def test_the_key_remembered_between_calls_is_dropped_with_its_peer_and_expires():
    lab = Lab().connect()
    dg = lambda: lab.client.seal(DATA, b"z" * 40, lab.now)    # noqa: E731
    one = lambda d: lab.gw.receive_groups([(d, len(d), "c1")], lab.now)   # noqa: E731
    assert one(dg()) == [(CL_PUB, DATA, b"z" * 40)]
    assert one(dg()) == [(CL_PUB, DATA, b"z" * 40)]             # the remembered key
    # expired: refused as receive() refuses it, even for the remembered key
    late = dg()
    lab.now += lab.timing.reject_after_s
    assert one(late) == [] and lab.gw.stats["expired"] == 1
    lab.now -= lab.timing.reject_after_s
    assert one(dg()) == [(CL_PUB, DATA, b"z" * 40)]
    # a forgotten peer's key opens nothing any more
    lab.gw.forget(CL_PUB)
    assert one(dg()) == [] and lab.gw.stats["unknown_index"] == 1
