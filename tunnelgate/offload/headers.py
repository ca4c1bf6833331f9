"""IP, TCP and virtio-net headers: the constants, the ones' complement sums
and the DATA_PARTIAL helpers that the rest of the offload package builds on.

Why a module of its own: segmentation (tso), coalescing, the chunk records
and the TUN (tun.py) all read and write these headers. The sums run in C
(struct, int.from_bytes), never as a Python loop over 16-bit words.

DATA_PARTIAL (wire.DATA_PARTIAL) is Linux's CHECKSUM_PARTIAL on the wire:
the TCP/UDP checksum field holds only the pseudo-header sum, and the
receiving kernel (virtio-net NEEDS_CSUM, `partial_vnet`) or
`complete_checksum` adds the payload on top.

virtio-net header (10 bytes, little-endian, TUNSETVNETHDRSZ default):
  flags u8 | gso_type u8 | hdr_len u16 | gso_size u16 | csum_start u16 | csum_offset u16
"""

from __future__ import annotations

import struct

# --- constants (Python 3.11 has no names for these) --------------------------------
VNET = struct.Struct("<BBHHHH")
VNET_LEN = VNET.size
VNET_PLAIN = bytes(VNET_LEN)          # a complete packet, no GSO
F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4 = 0, 1, 3, 4, 5
GSO_ECN = 0x80

TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04

TCP, UDP = 6, 17
CSUM_OFFSET = {TCP: 16, UDP: 6}
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 1, 2, 4, 8, 16, 32, 64, 128

H10 = struct.Struct("!10H")            # a 20-byte IPv4 header as ten words
_PSEUDO = struct.Struct("!4H")
_PSEUDO6 = struct.Struct("!16H")


# --- checksums ------------------------------------------------------------------------

def fold(s: int) -> int:
    """Ones' complement fold to 16 bits."""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ip_header_checksum(hdr) -> int:
    """Checksum of a 20-byte IPv4 header whose checksum field is zero."""
    return ~fold(sum(H10.unpack_from(hdr))) & 0xFFFF


def sum16(data) -> int:
    """Ones' complement sum of data (padded to even length), unfolded but < 2**17.
    int.from_bytes mod 0xFFFF is the ones' complement sum, done in C."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    s = int.from_bytes(data, "big") % 0xFFFF
    return s if s or not any(data) else 0xFFFF


def pseudo_sum(src_dst, proto: int, length: int) -> int:
    """Unfolded IPv4 pseudo-header sum (src, dst, proto, L4 length)."""
    return sum(_PSEUDO.unpack_from(src_dst)) + proto + length


def pseudo6_sum(src_dst, proto: int, length: int) -> int:
    """Unfolded IPv6 pseudo-header sum (src, dst, L4 length, next header)."""
    return sum(_PSEUDO6.unpack_from(src_dst)) + (length >> 16) + (length & 0xFFFF) + proto


def l4_start(pkt) -> tuple[int, int]:
    """(offset of the TCP/UDP header, protocol) of an IPv4 or IPv6 packet
    (IPv6: the fixed header's next header; extension headers are not walked)."""
    if pkt[0] >> 4 == 4:
        return (pkt[0] & 15) * 4, pkt[9]
    return 40, pkt[6]


def complete_checksum(pkt: bytes, csum_start: int, csum_offset: int) -> bytes:
    """Finish a CHECKSUM_PARTIAL packet in Python (the no-offload fallback):
    the field holds the pseudo-header sum, sum the rest on top of it."""
    c = ~fold(sum16(memoryview(pkt)[csum_start:])) & 0xFFFF
    # UDP sends a zero sum as 0xFFFF (0 means "none", which IPv6 forbids)
    if c == 0 and csum_offset == CSUM_OFFSET[UDP]:
        c = 0xFFFF
    at = csum_start + csum_offset
    return pkt[:at] + c.to_bytes(2, "big") + pkt[at + 2:]


def complete_partial(pkt: bytes) -> bytes:
    """A DATA_PARTIAL packet (see partial_ok) with its checksum finished."""
    start, proto = l4_start(pkt)
    return complete_checksum(pkt, start, CSUM_OFFSET[proto])


def reseed_partial(pkt: bytes) -> bytes:
    """An IPv4 or IPv6 TCP/UDP packet (checksum complete or partial) made
    DATA_PARTIAL: its checksum field set to the pseudo-header sum."""
    start, proto = l4_start(pkt)
    at = start + CSUM_OFFSET[proto]
    if pkt[0] >> 4 == 6:
        seed = fold(pseudo6_sum(pkt[8:40], proto, len(pkt) - 40))
    else:
        seed = fold(pseudo_sum(pkt[12:20], proto, len(pkt) - start))
    return pkt[:at] + seed.to_bytes(2, "big") + pkt[at + 2:]


def partial_ok(pkt) -> bool:
    """Is pkt a TCP/UDP packet that DATA_PARTIAL can describe (the receiver
    derives csum_start/offset from the headers)? IPv4 not fragmented, or IPv6
    with TCP/UDP right after the fixed header."""
    if len(pkt) >= 28 and pkt[0] >> 4 == 4:
        # per packet, so the IHL is not checked here: a bad one makes a
        # checksum offset the kernel refuses (the TUN write drops it, counted)
        return pkt[9] in CSUM_OFFSET and (pkt[6] & 0x3F) == 0 and pkt[7] == 0
    return len(pkt) >= 48 and pkt[0] >> 4 == 6 and pkt[6] in CSUM_OFFSET


def partial_vnet(pkt) -> bytes:
    """virtio-net header asking the kernel to finish a DATA_PARTIAL packet."""
    start, proto = l4_start(pkt)
    return VNET.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, start, CSUM_OFFSET[proto])
