"""TUN reads: one virtio-net frame (up to a 64 KB TCP TSO burst) -> the
transport payloads to seal: the burst's segments, cut in Python as the
kernel's GSO would, or its chunk records (chunks.py) for a peer that takes
them.

Why in Python: with TSO on, one TUN read returns a whole burst of one TCP
flow instead of one segment, which saves the syscalls that dominate the cost
per packet. The segments keep the pseudo-header sum as TCP checksum
(DATA_PARTIAL, see headers.py), so no payload byte is summed here.
"""

from __future__ import annotations

import struct

from ..wire import DATA, DATA_PARTIAL
from .chunks import DATA_CHUNK, tcp_chunks
from .headers import (CSUM_OFFSET, CWR, F_NEEDS_CSUM, FIN, GSO_ECN, GSO_NONE, GSO_TCPV4,
                      GSO_TCPV6, H10, PSH, TCP, VNET, VNET_LEN, complete_checksum, fold,
                      l4_start, partial_ok, pseudo6_sum, pseudo_sum, sum16)

_IP_FIXED = struct.Struct("!2sHH4sH8s")        # ver/ihl+tos, len, id, frag+ttl+proto, csum, src+dst
_TCP_FIXED = struct.Struct("!4sI5sB2sH")       # ports, seq, ack+doff, flags, window, csum


def split_frame(frame: bytes) -> tuple[list[bytes], bool]:
    """One TUN read (virtio-net header + packet) -> (IP packets, partial).

    partial=True: every packet is DATA_PARTIAL-shaped (pseudo-header sum in the
    checksum field). A packet the kernel left partial in a shape DATA_PARTIAL
    cannot describe is completed here (rare: IPv6, options). Returns ([], False)
    for a GSO type we did not enable or a frame whose headers do not hold."""
    if len(frame) <= VNET_LEN:
        return [], False
    flags, gso_type, _, gso_size, cs_start, cs_off = VNET.unpack_from(frame)
    pkt = frame[VNET_LEN:]
    gso_type &= ~GSO_ECN
    if gso_type == GSO_NONE:
        if not flags & F_NEEDS_CSUM:
            return [pkt], False
        if partial_ok(pkt):
            start, proto = l4_start(pkt)
            if cs_start == start and cs_off == CSUM_OFFSET[proto]:
                return [pkt], True
        if cs_start + cs_off + 2 > len(pkt):
            return [], False
        return [complete_checksum(pkt, cs_start, cs_off)], False
    if gso_type == GSO_TCPV4 and gso_size and len(pkt) >= 40 and pkt[0] >> 4 == 4 and pkt[9] == TCP:
        return tcp4_segments(pkt, gso_size), True
    if gso_type == GSO_TCPV6 and gso_size and len(pkt) >= 60 and pkt[0] >> 4 == 6 and pkt[6] == TCP:
        return tcp6_segments(pkt, gso_size), True
    return [], False


def frame_payloads(frame: bytes, chunks: bool) -> tuple[list[bytes], int]:
    """One TUN read -> (transport payloads, their kind): a TCP TSO burst as
    DATA_CHUNK payloads when `chunks` (the peer takes them) and they can carry
    it, otherwise as split_frame's packets, DATA_PARTIAL or DATA. ([], DATA)
    for a GSO type we did not enable or a malformed frame."""
    if chunks and len(frame) > VNET_LEN and frame[1] & ~GSO_ECN in (GSO_TCPV4, GSO_TCPV6):
        gso_size = VNET.unpack_from(frame)[3]
        pkt = frame[VNET_LEN:]
        out = tcp_chunks(pkt, gso_size)
        if out is not None:
            return out, DATA_CHUNK
    pkts, partial = split_frame(frame)
    return pkts, DATA_PARTIAL if partial else DATA


def tcp4_segments(pkt: bytes, mss: int) -> list[bytes]:
    """Cut an IPv4 TCP TSO burst into segments of `mss` payload bytes, as the
    kernel's GSO would: IP length/ID/checksum per segment, sequence numbers
    advanced, FIN/PSH only on the last segment, CWR only on the first. The TCP
    checksum field gets the segment's pseudo-header sum (DATA_PARTIAL).
    [] when the headers do not fit the packet (IHL or data offset below 5,
    or no payload behind them)."""
    ihl = (pkt[0] & 15) * 4
    if ihl < 20 or ihl + 20 >= len(pkt):
        return []
    thl = (pkt[ihl + 12] >> 4) * 4
    hl = ihl + thl
    if thl < 20 or hl >= len(pkt):
        return []
    ver_tos, _, ip_id, frag_ttl_proto, _, addrs = _IP_FIXED.unpack_from(pkt)
    ip_opts = pkt[20:ihl]
    ports, seq, ack_doff, tflags, window, _ = _TCP_FIXED.unpack_from(pkt, ihl)
    tcp_tail = pkt[ihl + 18:hl]                        # urgent pointer + options
    # Header words that do not change between segments, summed once.
    ip_const = sum(H10.unpack_from(pkt[:10] + bytes(2) + pkt[12:20]))
    ip_const -= int.from_bytes(pkt[2:4], "big") + ip_id  # length and ID vary
    ip_const += sum16(ip_opts) if ip_opts else 0
    pseudo = pseudo_sum(addrs, TCP, 0)
    payload = memoryview(pkt)[hl:]
    total = len(payload)
    ip_pack, tcp_pack = _IP_FIXED.pack, _TCP_FIXED.pack
    mid_flags = tflags & ~(FIN | PSH)
    out = []
    append = out.append
    off = i = 0
    while off < total:
        chunk = payload[off:off + mss]
        n = len(chunk)
        last = off + n >= total
        ip_len = hl + n
        pid = (ip_id + i) & 0xFFFF
        ipc = ~fold(ip_const + ip_len + pid) & 0xFFFF
        f = tflags if last else mid_flags
        if i:
            f &= ~CWR
        append(b"".join((ip_pack(ver_tos, ip_len, pid, frag_ttl_proto, ipc, addrs), ip_opts,
                         tcp_pack(ports, (seq + off) & 0xFFFFFFFF, ack_doff, f, window,
                                  fold(pseudo + thl + n)),
                         tcp_tail, chunk)))
        off += n
        i += 1
    return out


def tcp6_segments(pkt: bytes, mss: int) -> list[bytes]:
    """tcp4_segments for an IPv6 TCP TSO burst (TCP right after the fixed
    header): payload length and sequence number per segment, the same flag
    rules, the pseudo-header sum as TCP checksum (DATA_PARTIAL). [] as
    tcp4_segments for headers that do not fit."""
    thl = (pkt[52] >> 4) * 4
    hl = 40 + thl
    if thl < 20 or hl >= len(pkt):
        return []
    head, addrs = pkt[:4], pkt[6:40]                   # version/class/flow; next header, hops, addresses
    ports, seq, ack_doff, tflags, window, _ = _TCP_FIXED.unpack_from(pkt, 40)
    tcp_tail = pkt[58:hl]
    pseudo = pseudo6_sum(pkt[8:40], TCP, 0)
    payload = memoryview(pkt)[hl:]
    total = len(payload)
    tcp_pack = _TCP_FIXED.pack
    mid_flags = tflags & ~(FIN | PSH)
    out = []
    off = i = 0
    while off < total:
        chunk = payload[off:off + mss]
        n = len(chunk)
        f = tflags if off + n >= total else mid_flags
        if i:
            f &= ~CWR
        out.append(b"".join((head, (thl + n).to_bytes(2, "big"), addrs,
                             tcp_pack(ports, (seq + off) & 0xFFFFFFFF, ack_doff, f, window,
                                      fold(pseudo + thl + n)),
                             tcp_tail, chunk)))
        off += n
        i += 1
    return out
