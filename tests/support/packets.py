"""Packet builders for the offload and data-path tests: IPv4 and IPv6 TCP packets with
finished or partial (seeded) checksums (ipv4_tcp, ipv6_tcp), TSO reads as the TUN gives them
(tso_frame, tso6_frame: a virtio header and one big packet), a TSO burst with the segments
the kernel's GSO would cut from it (burst), and checks against a plain reference checksum
(ref_sum, tcp_ok, tcp6_ok). Used by tests/unit/offload (test_offload, test_chunks), by
tests/unit/daemon/test_datapath_gateway and by gateway_plane (its tcp)."""

from __future__ import annotations

import os
import struct

from tunnelgate import offload as off


def ref_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def tcp_ok(pkt: bytes) -> bool:
    ihl = (pkt[0] & 15) * 4
    pseudo = pkt[12:20] + bytes([0, pkt[9]]) + (len(pkt) - ihl).to_bytes(2, "big")
    return ref_sum(pseudo + pkt[ihl:]) == 0xFFFF and ref_sum(pkt[:ihl]) == 0xFFFF


def ipv4_tcp(payload: bytes, seq=1000, flags=off.ACK | off.PSH, ip_id=7, opts=b"", ack=55,
             window=512, partial=False) -> bytes:
    thl = 20 + len(opts)
    total = 20 + thl + len(payload)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ip_id, 0x4000, 64, 6, 0,
                               bytes([100, 64, 0, 2]), bytes([198, 18, 2, 2])))
    ip[10:12] = off.ip_header_checksum(ip).to_bytes(2, "big")
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, ack, (thl // 4) << 4, flags,
                                window, 0, 0) + opts)
    pkt = bytes(ip) + bytes(tcp) + payload
    seeded = off.reseed_partial(pkt)
    return seeded if partial else off.complete_checksum(seeded, 20, 16)


def tso_frame(payload: bytes, mss: int, **kw) -> bytes:
    big = ipv4_tcp(payload, partial=True, **kw)
    thl = (big[32] >> 4) * 4
    return off.VNET.pack(off.F_NEEDS_CSUM, off.GSO_TCPV4, 20 + thl, mss, 20, 16) + big


SRC6, DST6 = bytes.fromhex("fd647467" + "00" * 11 + "02"), bytes.fromhex("20010002000000020000000000000002")


def tcp6_ok(pkt: bytes) -> bool:
    pseudo = pkt[8:40] + (len(pkt) - 40).to_bytes(4, "big") + bytes([0, 0, 0, pkt[6]])
    return ref_sum(pseudo + pkt[40:]) == 0xFFFF


def ipv6_tcp(payload: bytes, seq=1000, flags=off.ACK | off.PSH, opts=b"", ack=55, window=512,
             partial=False, **_) -> bytes:
    """An IPv6 TCP packet (ip_id, IPv4 only, is accepted and ignored)."""
    thl = 20 + len(opts)
    ip = struct.pack("!IHBB16s16s", 0x60012345, thl + len(payload), 6, 64, SRC6, DST6)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, ack, (thl // 4) << 4, flags, window, 0, 0) + opts
    seeded = off.reseed_partial(ip + tcp + payload)
    return seeded if partial else off.complete_checksum(seeded, 40, 16)


def tso6_frame(payload: bytes, mss: int, **kw) -> bytes:
    big = ipv6_tcp(payload, partial=True, **kw)
    thl = (big[52] >> 4) * 4
    return off.VNET.pack(off.F_NEEDS_CSUM, off.GSO_TCPV6, 40 + thl, mss, 40, 16) + big


TS_OPTS = b"\x01\x01\x08\x0a" + bytes(range(8))


def burst(size: int, mss: int, flags=off.ACK | off.PSH, opts=TS_OPTS, seq=4_294_960_000, ip_id=65530,
          v6: bool = False):
    """A TSO read (virtio frame) and the segments the kernel's GSO would cut from it."""
    make, cut = (tso6_frame, off.tcp6_segments) if v6 else (tso_frame, off.tcp4_segments)
    frame = make(os.urandom(size), mss, flags=flags, opts=opts, seq=seq, ip_id=ip_id)
    return frame, cut(frame[off.VNET_LEN:], mss)
