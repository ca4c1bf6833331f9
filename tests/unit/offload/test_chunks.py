"""Chunk records (DATA_CHUNK): a TSO burst cut into template + payload
chunks, and the receiver's rebuilding. The reference is the segment path
(tcp4_segments): whatever arrives, the segments the kernel ends up with must be
exactly the segments the burst stands for, lost ones missing, order kept."""

from __future__ import annotations

import os
import random

import pytest

from tunnelgate import offload as off
from tunnelgate import session as sess
from tunnelgate import wire
from tunnelgate.offload.chunks import CHUNKS_MAX, DATA_CHUNK, OPENABLE_KINDS, chunk_kind
from tunnelgate.daemon.base import features
from tunnelgate.replay import ReplayWindow

from packets import burst, ipv4_tcp, ipv6_tcp, tcp6_ok, tcp_ok


def valid(pkt) -> bool:
    return tcp_ok(pkt) if pkt[0] >> 4 == 4 else tcp6_ok(pkt)


def expand(items) -> list[bytes]:
    """What the receiving kernel makes of Arrivals items: GSO frames segmented,
    other frames as they are (checksums finished as the kernel would)."""
    out = []
    for item in items:
        if type(item) is off.ChunkRun:
            frame = b"".join(item.frame_parts())
            hdr = off.VNET.unpack_from(frame)
            pkt = frame[off.VNET_LEN:]
            if hdr[1] in (off.GSO_TCPV4, off.GSO_TCPV6):
                assert hdr[3] == item.mss and hdr[2] == item.hl and hdr[4] == item.ih
                cut = off.tcp4_segments if hdr[1] == off.GSO_TCPV4 else off.tcp6_segments
                out.extend(cut(pkt, hdr[3]))
            else:
                assert hdr[0] == off.F_NEEDS_CSUM and hdr[4] == item.ih
                out.append(pkt)
        elif type(item) is list:
            out.extend(off.tcp4_segments(off.gso_frame(item)[off.VNET_LEN:], len(item[0]) - 52))
        else:
            out.append(off.reseed_partial(item[0]))
    return finished(out)


def finished(pkts):
    return [off.complete_partial(p) for p in pkts]


@pytest.mark.parametrize("size,mss", [(1368 * 47, 1368), (65000, 1368), (1368 * 3 + 1, 1368),
                                      (2 * 536, 536), (5000, 1448), (64000, 300)])
@pytest.mark.parametrize("flags", [off.ACK, off.ACK | off.PSH, off.ACK | off.PSH | off.FIN,
                                   off.ACK | off.CWR | off.ECE])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_all_chunks_make_one_gso_frame_equal_to_the_segments(size, mss, flags, v6):
    frame, segs = burst(size, mss, flags=flags, v6=v6)
    chunks, kind = off.frame_payloads(frame, chunks=True)
    assert kind == DATA_CHUNK and len(chunks) == len(segs)
    # a chunk is exactly as long as its segment: the wire carries what DATA_PARTIAL would
    assert [len(c) for c in chunks] == [len(s) for s in segs]
    arr = off.Arrivals()
    for i, c in enumerate(chunks):
        assert arr.chunk(c, chunk_kind(i, len(chunks)))
    items = arr.done()
    assert len(items) == 1 and type(items[0]) is off.ChunkRun
    assert items[0].wire_len() == sum(map(len, segs))
    got = expand(items)
    assert got == finished(segs)
    assert all(valid(p) for p in got)
    # the per-packet path rebuilds the very same DATA_PARTIAL segments
    assert items[0].segments() == segs
    assert off.chunks_as_segments(chunks) == segs


@pytest.mark.parametrize("seed", range(40))
def test_lost_and_split_chunks_rebuild_exactly_the_rest(seed):
    rnd = random.Random(seed)
    mss = rnd.choice([536, 1368, 1448])
    frame, segs = burst(rnd.randrange(mss + 1, 65000), mss, flags=rnd.choice([off.ACK, off.ACK | off.PSH]),
                        v6=seed % 2 == 1)
    chunks, _ = off.frame_payloads(frame, chunks=True)
    n = len(chunks)
    kept = sorted(rnd.sample(range(n), rnd.randrange(1, n + 1)))
    cut = rnd.randrange(len(kept) + 1)            # a burst split over two receive batches
    arr = off.Arrivals()
    got = []
    for j, i in enumerate(kept):
        if j == cut:
            got += expand(arr.done())
        assert arr.chunk(chunks[i], chunk_kind(i, n))
    got += expand(arr.done())
    assert got == finished([segs[i] for i in kept])


def test_order_kept_between_packets_and_chunks_and_bursts():
    frame1, segs1 = burst(1368 * 4, 1368, seq=1000)
    frame2, segs2 = burst(1368 * 4, 1368, seq=1000 + 1368 * 4)
    c1, _ = off.frame_payloads(frame1, True)
    c2, _ = off.frame_payloads(frame2, True)
    ack = ipv4_tcp(b"", seq=1, flags=off.ACK)
    arr = off.Arrivals()
    arr.packet(ack, False)
    for i, c in enumerate(c1):
        arr.chunk(c, chunk_kind(i, 4))
    for i, c in enumerate(c2):
        arr.chunk(c, chunk_kind(i, 4))
    arr.packet(ack, False)
    items = arr.done()
    # two bursts stay two runs (their templates differ): each is one GSO frame
    assert [type(x) for x in items] == [tuple, off.ChunkRun, off.ChunkRun, tuple]
    assert expand(items) == finished([off.reseed_partial(ack)] + segs1 + segs2 + [off.reseed_partial(ack)])


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_without_gso_the_receiver_gets_plain_segments(v6):
    frame, segs = burst(1368 * 5 + 7, 1368, v6=v6)
    chunks, _ = off.frame_payloads(frame, True)
    arr = off.Arrivals(gso=False)
    for i, c in enumerate(chunks):
        arr.chunk(c, chunk_kind(i, len(chunks)))
    assert arr.done() == [(s, True) for s in segs]


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_bursts_chunks_cannot_carry_fall_back_to_segments(v6):
    frame, segs = burst(20_000, 1368, v6=v6)
    assert off.frame_payloads(frame, chunks=False) == (segs, wire.DATA_PARTIAL)
    tiny, tiny_segs = burst(256 * 40, 40, v6=v6)           # more than CHUNKS_MAX chunks
    assert off.frame_payloads(tiny, True) == (tiny_segs, wire.DATA_PARTIAL)
    pkt = (ipv6_tcp if v6 else ipv4_tcp)(b"x" * 100)      # not a TSO read
    plain = off.VNET_PLAIN + pkt
    assert off.frame_payloads(plain, True) == ([pkt], wire.DATA)


@pytest.mark.parametrize("chunks", [True, False], ids=["chunks", "segments"])
def test_the_data_path_takes_a_plain_frame_as_frame_payloads_would(chunks):
    # daemon/datapath.py takes a frame with zero flags and GSO type itself (no
    # call on a lone packet's path): it must give what frame_payloads gives
    from tunnelgate.daemon.datapath import frames_to_bursts
    pkt = ipv4_tcp(b"x" * 100)
    partial = off.reseed_partial(pkt)
    data_valid = off.VNET.pack(2, off.GSO_NONE, 0, 0, 0, 0) + pkt      # flags: DATA_VALID
    frames = [off.VNET_PLAIN + pkt, off.partial_vnet(partial) + partial, data_valid,
              burst(1368 * 3, 1368)[0], off.VNET_PLAIN + ipv6_tcp(b"y" * 10)]
    got = frames_to_bursts(frames, True, chunks)
    assert got == [off.frame_payloads(f, chunks) for f in frames]
    assert got[0] == ([pkt], wire.DATA) and got[1] == ([partial], wire.DATA_PARTIAL)
    assert frames_to_bursts([pkt], False, chunks) == [([pkt], wire.DATA)]


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "no-gso"])
def test_a_lone_packet_comes_back_as_coalesce_gives_it(gso):
    # Arrivals takes a lone packet without calling coalesce (an idle ping's path)
    icmp = bytes([0x45]) + bytes(83)
    for pkt, partial in ((icmp, False), (ipv4_tcp(b"x" * 100), True), (ipv6_tcp(b"y" * 10), False)):
        arr = off.Arrivals(gso=gso)
        arr.packet(pkt, partial)
        assert arr.done() == off.coalesce([pkt], [partial]) == [(pkt, partial)]
    arr = off.Arrivals(gso=gso)                 # two still go through coalesce
    a, b = ipv4_tcp(b"a" * 100, seq=1, flags=off.ACK), ipv4_tcp(b"b" * 100, seq=101, flags=off.ACK)
    arr.packet(a, False)
    arr.packet(b, False)
    assert arr.done() == ([[a, b]] if gso else [(a, False), (b, False)])


def test_malformed_chunks_are_refused_not_raised():
    frame, _ = burst(1368 * 4, 1368)
    chunks, _ = off.frame_payloads(frame, True)
    arr = off.Arrivals()
    assert not arr.chunk(chunks[0][:30], chunk_kind(0, 4))           # too short
    assert not arr.chunk(chunks[0] + b"x", chunk_kind(0, 4))         # longer than mss
    assert not arr.chunk(chunks[3][:-1], chunk_kind(1, 4))           # short, not last
    assert not arr.chunk(b"\x46" + chunks[0][1:], chunk_kind(0, 4))  # IP options
    assert not arr.chunk(chunks[0][:9] + b"\x11" + chunks[0][10:], chunk_kind(0, 4))  # UDP
    assert arr.done() == []
    # a last chunk with no payload bytes does not extend a run (it stands for no segment)
    assert arr.chunk(chunks[0], chunk_kind(0, 2)) and not arr.chunk(chunks[0][:52], chunk_kind(1, 2))
    assert [len(x.chunks) for x in arr.done()] == [1]
    frame6, _ = burst(1368 * 4, 1368, v6=True)
    chunks6, _ = off.frame_payloads(frame6, True)
    assert not arr.chunk(chunks6[0][:60], chunk_kind(0, 4))                        # too short
    assert not arr.chunk(chunks6[0][:6] + b"\x11" + chunks6[0][7:], chunk_kind(0, 4))  # UDP
    assert not arr.chunk(chunks6[0][:4] + b"\x00\x20" + chunks6[0][6:], chunk_kind(0, 4))  # mss 0
    assert arr.done() == []
    chunks = chunks + chunks6
    rnd = random.Random(7)
    for _ in range(3000):
        c = bytearray(rnd.choice(chunks))
        for _ in range(rnd.randrange(1, 4)):
            c[rnd.randrange(len(c))] = rnd.randrange(256)
        arr.chunk(bytes(c[:rnd.randrange(len(c) + 1)]), chunk_kind(rnd.randrange(4), 4))
        if rnd.random() < 0.1:
            for item in arr.done():          # whatever was accepted builds frames without raising
                item.frame_parts() if type(item) is off.ChunkRun else None


def test_chunk_type_words():
    ok = OPENABLE_KINDS
    assert chunk_kind(0, 2) in ok and chunk_kind(254, 255) in ok
    assert chunk_kind(2, 2) not in ok                               # index >= count
    assert DATA_CHUNK not in ok                                     # count 0
    assert chunk_kind(0, 2) | 1 << 24 not in ok                     # top byte set
    assert chunk_kind(0, 2) ^ DATA_CHUNK ^ wire.DATA not in ok
    assert chunk_kind(0, CHUNKS_MAX + 1) not in ok


def pair():
    k1, k2 = os.urandom(32), os.urandom(32)
    a = sess.Transport(k1, k2, 1, 2, 0.0, aead=sess.PROTOCOLS["aesgcm"][1])
    b = sess.Transport(k2, k1, 2, 1, 0.0, aead=sess.PROTOCOLS["aesgcm"][1])
    return a, b


def test_sealed_chunks_open_one_by_one_with_their_index():
    a, b = pair()
    frame, segs = burst(1368 * 6, 1368)
    chunks, kind = off.frame_payloads(frame, True)
    datagrams = a.seal_batch(kind, chunks)
    arr = off.Arrivals()
    for i in (0, 1, 3, 4, 5):                 # datagram 2 lost: each still opens on its own
        k, payload = b.open(datagrams[i])
        assert k == chunk_kind(i, 6) and payload == chunks[i]
        assert arr.chunk(payload, k)
    assert expand(arr.done()) == finished(segs[:2] + segs[3:])
    # the type word is authenticated: another index is a forgery
    forged = bytearray(datagrams[2])
    forged[1] = 3
    assert b.open(bytes(forged)) is None and b.stats["bad_mac"] == 1
    bad = bytearray(datagrams[2])
    bad[2] = 0                                # count 0: not a chunk, malformed before the AEAD
    assert b.open(bytes(bad)) is None and b.stats["malformed"] == 1
    with pytest.raises(sess.SessionError):
        a.seal_batch(DATA_CHUNK, [chunks[0]] * 256)


def test_features_from_handshake_payloads():
    assert features(b'{"features": ["chunks", 3]}') == {"chunks"}
    for junk in (b"", b"\xff", b"[1]", b'{"features": "chunks"}', b"5", b'{"address": "x"}'):
        assert features(junk) == frozenset()


def test_only_the_same_owner_extends_a_run_and_a_refused_run_is_taken_back():
    frame, segs = burst(1368 * 3, 1368)
    chunks, _ = off.frame_payloads(frame, True)
    a, b = object(), object()
    arr = off.Arrivals()
    assert arr.chunk(chunks[0], chunk_kind(0, 3), a) == off.NEW
    # identical bytes from another sender start a run of their own (its source is checked again)
    assert arr.chunk(chunks[1], chunk_kind(1, 3), b) == off.NEW
    arr.drop_run()                              # ...and the caller refused it
    assert arr.chunk(chunks[2], chunk_kind(2, 3), a) == off.NEW   # the run of a was broken by b
    items = arr.done()
    assert [len(x.chunks) for x in items] == [1, 1] and all(x.owner is a for x in items)
    assert expand(items) == finished([segs[0], segs[2]])
    arr.chunk(chunks[0], chunk_kind(0, 3), a)
    assert arr.chunk(chunks[1], chunk_kind(1, 3), a) == off.CONTINUED


def test_a_run_of_chunks_extends_as_one_and_stops_at_the_first_that_does_not_continue():
    frame, segs = burst(1368 * 5 + 700, 1368)           # 6 chunks, the last short
    chunks, _ = off.frame_payloads(frame, True)
    k = chunk_kind
    arr = off.Arrivals()
    assert arr.chunks(chunks[:2], k(0, 6)) == off.NEW
    assert arr.chunks(chunks[2:], k(2, 6)) == off.CONTINUED        # the short last one included
    assert arr.bad == 0
    (run,) = arr.done()
    assert len(run.chunks) == 6 and run.next_kind == -1
    assert expand([run]) == finished(segs)

    # a chunk with other headers, or cut short mid-burst, ends the run: it and the rest are dropped
    other, _ = off.frame_payloads(burst(1368 * 5 + 700, 1368, seq=7)[0], True)
    for bad in (other[2], chunks[2][:-1]):
        arr = off.Arrivals()
        assert arr.chunks([chunks[0], chunks[1], bad, chunks[3]], k(0, 6)) == off.NEW
        assert arr.bad == 2
        # nothing continues it any more
        assert arr.chunk(chunks[4], k(4, 6)) == off.NEW
        items = arr.done()
        assert [len(x.chunks) for x in items] == [2, 1]
        assert expand(items) == finished(segs[:2] + [segs[4]])
    # a malformed first chunk: the caller drops the whole run
    arr = off.Arrivals()
    assert arr.chunks([chunks[0][:30], chunks[1]], k(0, 6)) == 0 and arr.done() == []
