"""TUN writes: received packets -> virtio-net frames, GRO done in Python.

`Arrivals` takes a receive batch's decrypted payloads in arrival order and
hands back what the TUN gets, keeping each flow's order: chunk runs (chunks.py),
groups of in-order TCP segments of one flow (`coalesce`, written as one GSO
frame by `gso_frame`) and single packets.

Why: one TUN write per GSO frame instead of one per segment, and the kernel
re-segments and finishes every checksum, so a bulk download costs a syscall
per burst rather than per packet.
"""

from __future__ import annotations

from .chunks import ChunkRun, chunk_run
from .headers import (ACK, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, PSH, TCP, VNET, fold,
                      ip_header_checksum, pseudo6_sum, pseudo_sum)

COALESCE_MAX = 65535 - 60             # IP total length of a coalesced burst


def _mergeable(pkt) -> int:
    """Where TCP starts (20 or 40) in an IPv4 TCP data segment without IP
    options or fragmenting, or an IPv6 one with TCP right after the fixed
    header, flags ACK[+PSH]; 0 for any other packet. (The data offset is
    checked once per group, where coalesce starts one: the rest must carry
    the same. IP lengths are not read: gso_frame writes its own.)"""
    if len(pkt) > 40 and pkt[0] == 0x45:
        if (pkt[9] == TCP and (pkt[6] & 0x3F) == 0 and pkt[7] == 0 and pkt[33] & ~PSH == ACK
                and len(pkt) > 20 + (pkt[32] >> 4) * 4):
            return 20
    elif len(pkt) > 60 and pkt[0] >> 4 == 6:
        if pkt[6] == TCP and pkt[53] & ~PSH == ACK and len(pkt) > 40 + (pkt[52] >> 4) * 4:
            return 40
    return 0


def _flow_key(pkt) -> bytes | None:
    """Addresses + ports of an IPv4 or IPv6 TCP packet (None for others)."""
    if len(pkt) >= 24 and pkt[0] >> 4 == 4 and pkt[9] == TCP:
        return pkt[12:24]
    if len(pkt) >= 44 and pkt[0] >> 4 == 6 and pkt[6] == TCP:
        return pkt[8:44]
    return None


def _signature(pkt, ih: int, thl: int) -> tuple:
    """What must be equal for segments to merge: IPv4 tos and ttl, IPv6 traffic
    class + flow label and hop limit; ack, doff, window and options."""
    ip = (pkt[1], pkt[8]) if ih == 20 else (pkt[0:4], pkt[7])
    return ip + (pkt[ih + 8:ih + 13], pkt[ih + 14:ih + 16], pkt[ih + 20:ih + thl])


class _Burst:
    __slots__ = ("pkts", "next_seq", "mss", "size", "closed", "sig", "partial")

    def __init__(self, pkt, partial: bool, ih: int):
        thl = (pkt[ih + 12] >> 4) * 4
        n = len(pkt) - ih - thl
        self.pkts = [pkt]
        self.next_seq = (int.from_bytes(pkt[ih + 4:ih + 8], "big") + n) & 0xFFFFFFFF
        self.mss = n
        self.size = len(pkt)
        self.closed = bool(pkt[ih + 13] & PSH)  # Linux GRO also ends a burst at PSH
        self.sig = _signature(pkt, ih, thl)
        self.partial = partial


def coalesce(packets: list[bytes], partial: list[bool]) -> list:
    """Group in-order TCP segments of one flow, IPv4 or IPv6 (same addresses,
    ports, ack, window, options; contiguous sequence numbers; equal sizes
    except a smaller last one; PSH ends a group) into lists, keeping every
    flow's order. Other packets come back as (packet, partial) pairs,
    `partial[i]` saying whether packet i is DATA_PARTIAL. Groups (lists of
    two or more) lose that flag: gso_frame reseeds the checksum anyway, and
    `reseed_partial` makes any member DATA_PARTIAL again."""
    out: list = []
    open_: dict[bytes, tuple[int, _Burst]] = {}
    for pkt, part in zip(packets, partial):
        ih = _mergeable(pkt)
        if not ih:
            key = _flow_key(pkt)
            if key is not None:
                open_.pop(key, None)
            out.append((pkt, part))
            continue
        key = pkt[12:24] if ih == 20 else pkt[8:44]     # addresses + ports
        entry = open_.get(key)
        if entry is not None:
            b = entry[1]
            thl = (pkt[ih + 12] >> 4) * 4
            n = len(pkt) - ih - thl
            if (not b.closed and n <= b.mss and b.size + n <= COALESCE_MAX
                    and int.from_bytes(pkt[ih + 4:ih + 8], "big") == b.next_seq
                    and _signature(pkt, ih, thl) == b.sig):
                b.pkts.append(pkt)
                b.size += n
                b.next_seq = (b.next_seq + n) & 0xFFFFFFFF
                b.partial = b.partial or part
                b.closed = n < b.mss or bool(pkt[ih + 13] & PSH)
                continue
        if pkt[ih + 12] < 0x50:
            # a TCP header shorter than 20 bytes (only a peer sends that):
            # never a group, gso_frame would read past it. Later segments
            # join a group only with the same data offset (_signature).
            open_.pop(key, None)
            out.append((pkt, part))
            continue
        b = _Burst(pkt, part, ih)
        open_[key] = (len(out), b)
        out.append(b)
    return [(x.pkts if len(x.pkts) > 1 else (x.pkts[0], x.partial)) if type(x) is _Burst else x
            for x in out]


def gso_frame(pkts: list[bytes]) -> bytes:
    """One virtio-net GSO frame for a coalesced group: the first segment's
    headers with the total length (IPv4: and a fresh header checksum) and the
    pseudo-header sum as TCP checksum; the kernel re-segments at the first
    segment's size and finishes every checksum. Flags: the last segment's
    (PSH)."""
    first = pkts[0]
    ih = 20 if first[0] >> 4 == 4 else 40
    thl = (first[ih + 12] >> 4) * 4
    hl = ih + thl
    payload_len = sum(map(len, pkts)) - hl * len(pkts)
    mss = len(first) - hl
    ip = bytearray(first[:hl])
    if ih == 20:
        ip[2:4] = (hl + payload_len).to_bytes(2, "big")
        ip[10:12] = b"\0\0"
        ip[10:12] = ip_header_checksum(ip).to_bytes(2, "big")
        seed, gso = pseudo_sum(first[12:20], TCP, thl + payload_len), GSO_TCPV4
    else:
        ip[4:6] = (thl + payload_len).to_bytes(2, "big")
        seed, gso = pseudo6_sum(first[8:40], TCP, thl + payload_len), GSO_TCPV6
    ip[ih + 13] = pkts[-1][ih + 13]
    ip[ih + 16:ih + 18] = fold(seed).to_bytes(2, "big")
    parts = [VNET.pack(F_NEEDS_CSUM, gso, hl, mss, ih, 16), ip]
    parts.extend(memoryview(p)[hl:] for p in pkts)
    return b"".join(parts)


CONTINUED, NEW = 1, 2           # Arrivals.chunk results (0: malformed)


class Arrivals:
    """Decrypted data packets in arrival order -> items for the TUN, keeping
    each flow's order: ChunkRun, lists of coalesced segments (see coalesce)
    and (packet, partial) pairs."""

    __slots__ = ("items", "pkts", "partial", "run", "gso", "bad")

    def __init__(self, gso: bool = True):
        # gso False: the TUN takes no GSO frames, so done() returns only
        # (packet, partial) pairs, chunk runs cut back into their segments
        self.gso = gso
        self.items: list = []
        self.pkts: list[bytes] = []
        self.partial: list[bool] = []
        self.run: ChunkRun | None = None
        self.bad = 0                # chunks() dropped: did not continue their run

    def packet(self, pkt: bytes, partial: bool) -> None:
        self.pkts.append(pkt)
        self.partial.append(partial)
        self.run = None

    def chunk(self, payload: bytes, kind: int, owner=None) -> int:
        """Add a chunk from `owner` (any tag, compared by identity): CONTINUED when
        it extends the run before it (same owner, same headers: whatever was
        checked of the run's first chunk holds for it), NEW when it starts a run
        (self.run; see drop_run), 0 (nothing added) when it is malformed."""
        # type word (chunks.py): kind >> 8 & 0xFF the index, kind >> 16 the count
        run = self.run
        if (run is not None and kind == run.next_kind and owner is run.owner
                and payload.startswith(run.template)
                and (len(payload) == run.full
                     or (kind >> 16) - (kind >> 8 & 0xFF) == 1 and run.hl < len(payload) < run.full)):
            run.chunks.append(payload)
            idx = (kind >> 8 & 0xFF) + 1
            run.next_kind = kind + 256 if idx < run.count else -1
            return CONTINUED
        run = chunk_run(payload, kind)
        if run is None:
            return 0
        run.owner = owner
        self._flush()
        self.items.append(run)
        self.run = run
        return NEW

    def chunks(self, payloads: list, kind: int, owner=None) -> int:
        """chunk() for consecutive chunks of one burst (type words kind,
        kind + 256, ...: session.receive_groups' runs) -> chunk()'s result for
        the first. The others must continue it exactly (same headers, full
        length but for the burst's last); from the first that does not, the
        rest are dropped and counted in self.bad: an authenticated sender
        never interleaves bursts within a run."""
        got = self.chunk(payloads[0], kind, owner)
        if not got or len(payloads) == 1:
            return got
        run = self.run
        template, full = run.template, run.full
        n = len(payloads)
        ok = 1
        for p in payloads[1:n - 1]:
            if len(p) != full or not p.startswith(template):
                break
            ok += 1
        else:
            # the last may be short when it is the burst's last chunk
            p = payloads[n - 1]
            if ((len(p) == full or (kind >> 8 & 0xFF) + n == kind >> 16 and run.hl < len(p) < full)
                    and p.startswith(template)):
                ok = n
        run.chunks.extend(payloads[1:ok])
        if ok < n:
            self.bad += n - ok
            run.next_kind = -1
        else:
            k = kind + (n << 8)
            run.next_kind = k if (k >> 8 & 0xFF) < run.count else -1
        return got

    def drop_run(self) -> None:
        """Take back the run the last chunk() started (its sender may not send it)."""
        if self.run is not None and self.items and self.items[-1] is self.run:
            self.items.pop()
        self.run = None

    def _flush(self) -> None:
        if self.pkts:
            if len(self.pkts) == 1:
                # nothing to coalesce with: a lone packet (an idle ping) skips
                # coalesce's calls, cold on a CPU woken from idle
                self.items.append((self.pkts[0], self.partial[0]))
            elif self.gso:
                self.items.extend(coalesce(self.pkts, self.partial))
            else:
                self.items.extend(zip(self.pkts, self.partial))
            self.pkts, self.partial = [], []

    def done(self) -> list:
        self._flush()
        items = self.items
        self.items, self.run = [], None
        if not self.gso:
            flat = []
            for item in items:
                if type(item) is ChunkRun:
                    flat.extend((p, True) for p in item.segments())
                else:
                    flat.append(item)
            return flat
        return items
