"""The chunk record (DATA_CHUNK), all of it in one place: the type word, the
payload layout, the handshake feature that allows it, and the helpers that
encode a TSO burst into records and parse them back.

Record (a transport record of tunnelgate.wire, type 7):

  DATA_CHUNK u8 | index u8 | count u8 | 0 | receiver_index u32 | counter u64 | AEAD(payload)

  The one transport type whose high bytes are not zero: chunk `index` of
  `count` (index < count <= CHUNKS_MAX, the top byte zero; OPENABLE_KINDS
  holds every valid type word) cut from one TCP TSO burst. A receiver tells a
  chunk by the low byte alone (`kind & 0xFF == DATA_CHUNK`) and the chunks
  of one burst follow each other with type words kind, kind + 256, ...

Payload: the burst's IP+TCP headers (the template) + slice `index` of the
burst's payload, cut at the segment size `mss`. The template carries `mss` in
a field every segment rewrites anyway: IPv4 (no options, not fragmented): the
header checksum; IPv6 (TCP as the fixed header's next header): the payload
length, as TCP header length + mss. Template + slice is exactly as long as
the segment the kernel would have cut, so the wire carries what DATA_PARTIAL
would (docs/protocol.md has the same table).

Why: the sender builds no per-segment headers (`tcp_chunks` slices the
burst), and a receiver holding consecutive chunks of one burst hands them to
its kernel as one GSO frame (`ChunkRun.frame_parts`), rebuilding segment
headers only around a lost chunk or for a TUN without offloads
(`ChunkRun.segments`). Sent only to a peer whose handshake listed
FEATURE_CHUNKS; to any other, `chunks_as_segments` turns them back into
DATA_PARTIAL segments.

The receive loops (session._extend_run per datagram, coalesce.Arrivals per
run) decode index and count from the type word inline, as laid out above:
there a call would cost more than the decoding.
"""

from __future__ import annotations

from ..wire import TRANSPORT_KINDS
from .headers import (CWR, F_NEEDS_CSUM, FIN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, PSH, TCP, VNET,
                      fold, ip_header_checksum, pseudo6_sum, pseudo_sum)

DATA_CHUNK = 7
CHUNKS_MAX = 255
FEATURE_CHUNKS = "chunks"             # handshake feature: this side takes DATA_CHUNK


def chunk_kind(index: int, count: int) -> int:
    """The type word of chunk `index` of `count`."""
    return DATA_CHUNK | index << 8 | count << 16


# every type word a transport record may carry, chunks included (index < count <=
# CHUNKS_MAX, top byte zero): one set lookup per datagram on the receive path
# (32,640 chunk words, ~1 MB)
OPENABLE_KINDS = TRANSPORT_KINDS | frozenset(chunk_kind(i, n) for n in range(1, CHUNKS_MAX + 1)
                                             for i in range(n))


def tcp_chunks(pkt: bytes, mss: int) -> list[bytes] | None:
    """A TCP TSO burst -> DATA_CHUNK payloads: the burst's headers (the
    template) + each `mss` slice of its payload. The template carries `mss` in
    a field the receiver rewrites anyway: IPv4's header checksum, IPv6's payload
    length (as TCP header + mss, the length of a full segment). None when
    chunks cannot carry it (IP options, IPv6 extension headers, too many
    chunks): the caller cuts segments instead."""
    if not 0 < mss <= 0xFFFF:
        return None
    if len(pkt) >= 41 and pkt[0] == 0x45 and pkt[9] == TCP:
        if pkt[32] < 0x50 or (pkt[6] & 0x3F) or pkt[7]:
            return None         # what chunk_run would refuse: cut segments instead
        hl = 20 + (pkt[32] >> 4) * 4
        template = pkt[:10] + mss.to_bytes(2, "big") + pkt[12:hl]
    elif len(pkt) >= 61 and pkt[0] >> 4 == 6 and pkt[6] == TCP:
        thl = (pkt[52] >> 4) * 4
        hl = 40 + thl
        if thl < 20 or thl + mss > 0xFFFF:
            return None
        template = pkt[:4] + (thl + mss).to_bytes(2, "big") + pkt[6:hl]
    else:
        return None
    total = len(pkt) - hl
    if total <= 0 or -(-total // mss) > CHUNKS_MAX:
        return None
    payload = memoryview(pkt)[hl:]
    return [template + payload[i:i + mss] for i in range(0, total, mss)]


class ChunkRun:
    """Received chunks index first, first+1, ... of one burst (same template).
    `frame_parts()` is what the TUN gets: one GSO frame for two or more chunks;
    `segments()` rebuilds each chunk's own DATA_PARTIAL segment (per-packet
    metering, TUNs without offloads)."""

    __slots__ = ("template", "ih", "hl", "mss", "first", "count", "chunks", "next_kind", "full", "owner")

    def __init__(self, template: bytes, hl: int, mss: int, first: int, count: int, chunk: bytes):
        self.template = template
        self.ih = 20 if template[0] >> 4 == 4 else 40     # IP header: where TCP starts
        self.hl = hl
        self.mss = mss
        self.first = first
        self.count = count
        self.chunks = [chunk]
        self.next_kind = chunk_kind(first + 1, count) if first + 1 < count else -1
        self.full = hl + mss
        self.owner = None          # who sent it (Arrivals.chunk): only its chunks extend the run

    @property
    def src(self) -> bytes:
        return self.template[12:16] if self.ih == 20 else self.template[8:24]

    @property
    def dst(self) -> bytes:
        return self.template[16:20] if self.ih == 20 else self.template[24:40]

    def wire_len(self) -> int:
        """Sum of the IP lengths of the segments these chunks stand for."""
        return sum(map(len, self.chunks))

    def _header(self, index: int, k: int, payload_len: int) -> bytearray:
        t, hl, ih = self.template, self.hl, self.ih
        hdr = bytearray(t)
        tcp_len = hl - ih + payload_len
        if ih == 20:
            hdr[2:4] = (hl + payload_len).to_bytes(2, "big")
            hdr[4:6] = ((int.from_bytes(t[4:6], "big") + index) & 0xFFFF).to_bytes(2, "big")
            hdr[10:12] = b"\0\0"
            hdr[10:12] = ip_header_checksum(hdr).to_bytes(2, "big")
            pseudo = pseudo_sum(t[12:20], TCP, tcp_len)
        else:
            hdr[4:6] = tcp_len.to_bytes(2, "big")
            pseudo = pseudo6_sum(t[8:40], TCP, tcp_len)
        hdr[ih + 4:ih + 8] = ((int.from_bytes(t[ih + 4:ih + 8], "big") + index * self.mss)
                              & 0xFFFFFFFF).to_bytes(4, "big")
        f = t[ih + 13]
        if index + k < self.count:
            f &= ~(FIN | PSH)
        if index:
            f &= ~CWR
        hdr[ih + 13] = f
        hdr[ih + 16:ih + 18] = fold(pseudo).to_bytes(2, "big")
        return hdr

    def frame_parts(self) -> list:
        """The virtio-net frame (GSO for two or more chunks, else one NEEDS_CSUM
        packet) as a list of buffers for one writev (Tun.write_frames): the
        chunks' payloads are not joined into one bytes object first."""
        hl, ih, chunks = self.hl, self.ih, self.chunks
        payload_len = sum(map(len, chunks)) - hl * len(chunks)
        hdr = self._header(self.first, len(chunks), payload_len)
        if len(chunks) == 1:
            return [VNET.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, ih, 16), hdr, memoryview(chunks[0])[hl:]]
        gso = GSO_TCPV4 if ih == 20 else GSO_TCPV6
        parts = [VNET.pack(F_NEEDS_CSUM, gso, hl, self.mss, ih, 16), hdr]
        parts.extend([c[hl:] for c in chunks])      # a copy is cheaper than a memoryview here
        return parts

    def segments(self) -> list[bytes]:
        hl = self.hl
        return [bytes(self._header(self.first + i, 1, len(c) - hl)) + memoryview(c)[hl:]
                for i, c in enumerate(self.chunks)]


def chunk_run(payload: bytes, kind: int) -> ChunkRun | None:
    """A received chunk (type word `kind`, in OPENABLE_KINDS) -> a run of one,
    or None when the payload is not a chunk this module could have sent."""
    index, count = kind >> 8 & 0xFF, kind >> 16
    if len(payload) >= 41 and payload[0] == 0x45:
        if payload[9] != TCP or (payload[6] & 0x3F) or payload[7]:
            return None
        thl = (payload[32] >> 4) * 4
        hl = 20 + thl
        mss = int.from_bytes(payload[10:12], "big")
    elif len(payload) >= 61 and payload[0] >> 4 == 6:
        if payload[6] != TCP:
            return None
        thl = (payload[52] >> 4) * 4
        hl = 40 + thl
        mss = int.from_bytes(payload[4:6], "big") - thl
    else:
        return None
    n = len(payload) - hl
    if thl < 20 or n <= 0 or n > mss or (n < mss and index != count - 1):
        return None
    return ChunkRun(payload[:hl], hl, mss, index, count, payload)


def chunks_as_segments(payloads: list[bytes]) -> list[bytes]:
    """A burst's DATA_CHUNK payloads (from tcp_chunks) -> its DATA_PARTIAL
    segments, for a receiver that does not take chunks or a burst metered
    packet by packet. [] for payloads no chunk run can hold."""
    run = chunk_run(payloads[0], chunk_kind(0, len(payloads)))
    if run is None:
        return []
    run.chunks.extend(payloads[1:])
    return run.segments()
