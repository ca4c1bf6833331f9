"""Offload helpers: TSO segmentation, checksums, coalescing, GSO frames, UDP GSO/GRO
over loopback. Checksums are checked against a plain reference implementation."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from tunnelgate import offload as off

from packets import DST6, SRC6, ipv4_tcp, ipv6_tcp, ref_sum, tcp6_ok, tcp_ok, tso6_frame, tso_frame


def test_complete_checksum_matches_reference():
    for n in (0, 1, 2, 13, 1400, 1401):
        pkt = ipv4_tcp(os.urandom(n))
        assert tcp_ok(pkt)


@pytest.mark.parametrize("size,mss", [(1, 1380), (1380, 1380), (1381, 1380), (65000, 1380), (5000, 536)])
def test_tso_segments_are_valid_and_reassemble(size, mss):
    data = os.urandom(size)
    opts = b"\x01\x01\x08\x0a" + os.urandom(8)
    frame = tso_frame(data, mss, seq=0xFFFFF000, opts=opts, flags=off.ACK | off.PSH | off.FIN | off.CWR)
    pkts, partial = off.split_frame(frame)
    assert partial
    assert len(pkts) == -(-size // mss)
    got = b""
    for i, p in enumerate(pkts):
        full = off.complete_checksum(p, 20, 16)
        assert tcp_ok(full)
        thl = (p[32] >> 4) * 4
        assert struct.unpack("!I", p[24:28])[0] == (0xFFFFF000 + i * mss) & 0xFFFFFFFF
        assert struct.unpack("!H", p[4:6])[0] == 7 + i
        last = i == len(pkts) - 1
        assert bool(p[33] & (off.FIN | off.PSH)) == last
        assert bool(p[33] & off.CWR) == (i == 0)
        assert p[40:20 + thl] == opts
        got += p[20 + thl:]
    assert got == data


@pytest.mark.parametrize("size,mss", [(1, 1380), (1381, 1380), (65000, 1360), (5000, 536)])
def test_tso6_segments_are_valid_and_reassemble(size, mss):
    data = os.urandom(size)
    opts = b"\x01\x01\x08\x0a" + os.urandom(8)
    frame = tso6_frame(data, mss, seq=0xFFFFF000, opts=opts, flags=off.ACK | off.PSH | off.FIN | off.CWR)
    pkts, partial = off.split_frame(frame)
    assert partial and len(pkts) == -(-size // mss)
    got = b""
    for i, p in enumerate(pkts):
        assert off.partial_ok(p) and off.partial_vnet(p) == off.VNET.pack(1, 0, 0, 0, 40, 16)
        full = off.complete_partial(p)
        assert tcp6_ok(full) and full[:4] == frame[10:14] and full[6:40] == frame[16:50]
        assert struct.unpack("!H", p[4:6])[0] == len(p) - 40
        assert struct.unpack("!I", p[44:48])[0] == (0xFFFFF000 + i * mss) & 0xFFFFFFFF
        last = i == len(pkts) - 1
        assert bool(p[53] & (off.FIN | off.PSH)) == last
        assert bool(p[53] & off.CWR) == (i == 0)
        assert p[60:72] == opts
        got += p[72:]
    assert got == data


def test_ipv6_partial_single_frames_and_udp_zero_sum():
    pkt = ipv6_tcp(b"hello")
    assert tcp6_ok(pkt)
    seeded = off.reseed_partial(pkt)
    assert off.split_frame(off.VNET.pack(off.F_NEEDS_CSUM, 0, 0, 0, 40, 16) + seeded) == ([seeded], True)
    assert off.complete_partial(seeded) == pkt
    # another next header (say, an extension header the kernel skipped): DATA_PARTIAL cannot
    # describe it, so it is finished at once where the kernel said
    ext = bytearray(seeded)
    ext[6] = 60
    pkts, partial = off.split_frame(off.VNET.pack(off.F_NEEDS_CSUM, 0, 0, 0, 40, 16) + bytes(ext))
    assert not partial and not off.partial_ok(ext)
    assert pkts[0][56:58] == off.complete_checksum(seeded, 40, 16)[56:58]
    # UDP over IPv6 never carries a zero checksum (0 = none, forbidden there)
    for n in range(300):
        body = n.to_bytes(2, "big") + bytes(6)
        udp = struct.pack("!IHBB16s16s", 0x60000000, 8 + len(body), 17, 64, SRC6, DST6) + \
            struct.pack("!HHHH", 1, 2, 8 + len(body), 0) + body
        done = off.complete_partial(off.reseed_partial(udp))
        assert done[46:48] != b"\0\0"
        pseudo = done[8:40] + (len(done) - 40).to_bytes(4, "big") + bytes([0, 0, 0, 17])
        assert ref_sum(pseudo + done[40:]) == 0xFFFF


def test_plain_and_partial_single_frames():
    pkt = ipv4_tcp(b"hello")
    assert off.split_frame(off.VNET_PLAIN + pkt) == ([pkt], False)
    seeded = off.reseed_partial(pkt)
    vh = off.VNET.pack(off.F_NEEDS_CSUM, 0, 0, 0, 20, 16)
    assert off.split_frame(vh + seeded) == ([seeded], True)
    # a partial shape DATA_PARTIAL cannot describe is finished on the spot
    vh_odd = off.VNET.pack(off.F_NEEDS_CSUM, 0, 0, 0, 20, 16)
    udp_like = bytearray(seeded)
    pkts, partial = off.split_frame(vh_odd + bytes(udp_like))
    assert partial and off.complete_checksum(pkts[0], 20, 16) == pkt
    assert off.split_frame(off.VNET.pack(0, off.GSO_TCPV6, 0, 1000, 0, 0) + pkt) == ([], False)


FAMILIES = [pytest.param(ipv4_tcp, tso_frame, 20, off.GSO_TCPV4, id="ipv4"),
            pytest.param(ipv6_tcp, tso6_frame, 40, off.GSO_TCPV6, id="ipv6")]


def _complete(p: bytes, ih: int) -> bytes:
    return off.complete_checksum(p, ih, 16)


@pytest.mark.parametrize("tcp, tso, ih, gso", FAMILIES)
def test_coalesce_roundtrip_through_gso_frame(tcp, tso, ih, gso):
    data = os.urandom(20000)
    pkts, _ = off.split_frame(tso(data, 1000, opts=b"\x01\x01\x08\x0a" + bytes(8)))
    x = tcp(b"x", seq=5)
    other = x[:ih + 2] + b"\x9c\x41" + x[ih + 4:]                  # another port
    items = off.coalesce(pkts[:7] + [other] + pkts[7:], [True] * 7 + [False] + [True] * (len(pkts) - 7))
    groups = [i for i in items if type(i) is list]
    assert len(groups) == 1 and len(groups[0]) == len(pkts)
    assert items[1] == (other, False)
    frame = off.gso_frame(groups[0])
    flags, gso_type, hdr_len, gso_size, cs_start, cs_off = off.VNET.unpack_from(frame)
    assert (flags, gso_type, hdr_len, gso_size, cs_start, cs_off) == (1, gso, ih + 32, 1000, ih, 16)
    big = frame[10:]
    assert big[ih + 32:] == data
    if ih == 20:
        assert struct.unpack("!H", big[2:4])[0] == len(big) and ref_sum(big[:20]) == 0xFFFF
    else:
        assert struct.unpack("!H", big[4:6])[0] == len(big) - 40 and big[:4] == pkts[0][:4]
    # the kernel would re-segment exactly as the sender's TSO did
    again, _ = off.split_frame(frame)
    assert [_complete(p, ih)[ih:] for p in again] == [_complete(p, ih)[ih:] for p in pkts]
    assert all((tcp_ok if ih == 20 else tcp6_ok)(_complete(p, ih)) for p in again)


@pytest.mark.parametrize("tcp, tso, ih, gso", FAMILIES)
def test_coalesce_keeps_gaps_and_order(tcp, tso, ih, gso):
    a = tcp(b"a" * 100, seq=0, flags=off.ACK)
    b = tcp(b"b" * 100, seq=100, flags=off.ACK)
    c = tcp(b"c" * 100, seq=300, flags=off.ACK)   # gap: not merged
    d = tcp(b"d" * 100, seq=400, flags=off.ACK)
    syn = tcp(b"", seq=0, flags=off.SYN)
    items = off.coalesce([a, b, c, d, syn], [False] * 5)
    assert items[0] == [a, b] and items[1] == [c, d] and items[2] == (syn, False)
    # PSH ends a group; a shorter segment too
    p = tcp(b"p" * 100, seq=100, flags=off.ACK | off.PSH)
    items = off.coalesce([a, p, tcp(b"q" * 100, seq=200, flags=off.ACK)], [False] * 3)
    assert items[0] == [a, p] and type(items[1]) is tuple
    short = tcp(b"s" * 50, seq=100, flags=off.ACK)
    items = off.coalesce([a, short, tcp(b"t" * 50, seq=150, flags=off.ACK)], [False] * 3)
    assert items[0] == [a, short] and type(items[1]) is tuple
    # a different ack number is a different burst
    other_ack = tcp(b"b" * 100, seq=100, flags=off.ACK, ack=99)
    assert [type(i) for i in off.coalesce([a, other_ack], [False] * 2)] == [tuple, tuple]
    # so is a different TTL / hop limit, and in IPv6 a different flow label
    hop = bytearray(b)
    hop[8 if ih == 20 else 7] -= 1
    assert [type(i) for i in off.coalesce([a, bytes(hop)], [False] * 2)] == [tuple, tuple]
    if ih == 40:
        label = bytearray(b)
        label[3] ^= 1
        assert [type(i) for i in off.coalesce([a, bytes(label)], [False] * 2)] == [tuple, tuple]
    # a non-mergeable segment of the flow (SYN here) closes its open group
    e = tcp(b"e" * 100, seq=200, flags=off.ACK)
    items = off.coalesce([a, b, syn, e], [False] * 4)
    assert items == [[a, b], (syn, False), (e, False)]


def test_coalesce_keeps_ipv4_and_ipv6_flows_apart():
    a4, b4 = ipv4_tcp(b"a" * 100, seq=0, flags=off.ACK), ipv4_tcp(b"b" * 100, seq=100, flags=off.ACK)
    a6, b6 = ipv6_tcp(b"a" * 100, seq=0, flags=off.ACK), ipv6_tcp(b"b" * 100, seq=100, flags=off.ACK)
    items = off.coalesce([a4, a6, b4, b6], [False] * 4)
    assert items == [[a4, b4], [a6, b6]]
    # an IPv6 segment with an extension header is not taken apart: left as it is
    ext = bytearray(b6)
    ext[6] = 0                                      # hop-by-hop options first
    assert off.coalesce([a6, bytes(ext)], [False] * 2) == [(a6, False), (bytes(ext), False)]


def test_udp_gso_send_and_gro_receive_loopback():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, 200000))
        receiver = off.UdpReceiver(rx)
        sender = off.UdpSender(tx)
        def cut(groups):
            return [bytes(b[i:i + s]) for b, s, _ in groups for i in range(0, len(b) or 1, s)]

        plain = off.UdpSender(tx, gso=False)
        assert plain.send([b"a", b"", b"b"], rx.getsockname()) == 0
        assert cut(receiver.recv_groups()) == [b"a", b"", b"b"]
        datagrams = [bytes([i]) * 1200 for i in range(50)] + [b"end" * 10] + [b"x" * 70] * 3
        assert sender.send(datagrams, rx.getsockname()) == 0
        # (buffer, segment size, addr), about `limit` datagrams per call
        groups = []
        for _ in range(20):
            batch = receiver.recv_groups(limit=8)
            if not batch:
                break
            assert sum(-(-len(b) // s) for b, s, _ in batch[:-1]) < 8
            groups.extend(batch)
        assert all(a[1] == tx.getsockname()[1] for _, _, a in groups)
        assert cut(groups) == datagrams
        if receiver.gro:
            assert any(len(b) > s for b, s, _ in groups)
    finally:
        rx.close()
        tx.close()


def test_segments_with_a_data_offset_below_5_are_not_coalesced_nor_cut():
    # a peer's in-order segments of one flow, all claiming a 4-byte TCP header:
    # gso_frame, trusting it, read past the headers it copied (IndexError)
    segs = []
    for i in range(3):
        p = bytearray(ipv4_tcp(b"x" * 100, seq=1 + i * 116, flags=off.ACK))
        p[32] = 0x10
        segs.append(bytes(p))
    out = off.coalesce(segs, [False] * 3)
    assert out == [(s, False) for s in segs]
    burst = bytearray(ipv4_tcp(b"y" * 3000, seq=1, flags=off.ACK))
    burst[32] = 0x30
    frame = off.VNET.pack(off.F_NEEDS_CSUM, off.GSO_TCPV4, 0, 1000, 20, 16) + bytes(burst)
    assert off.split_frame(frame) == ([], True)
    assert off.tcp_chunks(bytes(burst), 1000) is None
    assert off.split_frame(b"\x01\x04\x00") == ([], False)


def test_the_session_loads_no_socket_code_through_the_offload_package():
    """session.py imports offload.chunks, which runs the package's __init__;
    udp.py (socket, select) must load only when its names are asked for,
    and then under the package's name as before."""
    import subprocess
    import sys
    code = ("import sys, tunnelgate.session\n"
            "loaded = {'socket', 'select', 'tunnelgate.offload.udp'} & set(sys.modules)\n"
            "assert not loaded, f'importing the session loaded {sorted(loaded)}'\n"
            "from tunnelgate.offload import UdpReceiver, UdpSender\n"
            "from tunnelgate.offload import udp\n"
            "assert UdpSender is udp.UdpSender and UdpReceiver is udp.UdpReceiver\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="no attribute 'UdpSenders'"):
        off.UdpSenders
