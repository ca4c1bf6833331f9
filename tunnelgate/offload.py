"""Offload helpers for the data path: virtio-net headers (TUN TSO/CSUM), TCP
segmentation and coalescing in Python, UDP GSO send and UDP GRO receive.

Why: in Python the cost per syscall dominates. With offloads a TUN read returns
up to 64 KB of one TCP flow, one `sendmsg` sends up to 64 equal datagrams, one
`recvmsg_into` returns several, and one TUN write hands the kernel a burst to
segment itself.

Each datagram still carries exactly one IP packet (a lost datagram costs one
segment). Segments cut from a TSO burst travel as DATA_PARTIAL: their TCP
checksum field holds only the pseudo-header sum, exactly like a Linux
CHECKSUM_PARTIAL packet, so nobody sums payload bytes in Python on the common
path: the receiving kernel finishes the checksum (virtio-net NEEDS_CSUM), or
`complete_checksum` does it when the receiver has no offloads.

virtio-net header (10 bytes, little-endian, TUNSETVNETHDRSZ default):
  flags u8 | gso_type u8 | hdr_len u16 | gso_size u16 | csum_start u16 | csum_offset u16
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct

from .wire import CHUNKS_MAX, DATA, DATA_CHUNK, DATA_PARTIAL, chunk_kind

def mode() -> str:
    """TUNNELGATE_OFFLOAD: unset/"1" all offloads, "0" none (one packet per
    syscall everywhere), "nogro" all but UDP GRO, "nochunks" all but chunk
    records (the daemon neither announces nor sends DATA_CHUNK). A diagnostic
    and test switch for the fallback paths, read when a daemon opens its TUN
    and socket or handshakes."""
    return os.environ.get("TUNNELGATE_OFFLOAD", "1")


def chunks_enabled() -> bool:
    return mode() != "nochunks"


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

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64                 # UDP_MAX_SEGMENTS on older kernels
GSO_MAX_BYTES = 65000                 # one UDP GSO send is one <64 KB skb
COALESCE_MAX = 65535 - 60             # IP total length of a coalesced burst

TCP, UDP = 6, 17
CSUM_OFFSET = {TCP: 16, UDP: 6}
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 1, 2, 4, 8, 16, 32, 64, 128

_IP_FIXED = struct.Struct("!2sHH4sH8s")        # ver/ihl+tos, len, id, frag+ttl+proto, csum, src+dst
_TCP_FIXED = struct.Struct("!4sI5sB2sH")       # ports, seq, ack+doff, flags, window, csum
_H10 = struct.Struct("!10H")
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
    return ~fold(sum(_H10.unpack_from(hdr))) & 0xFFFF


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


# --- TUN reads: virtio-net frame -> packets --------------------------------------------

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
    ip_const = sum(_H10.unpack_from(pkt[:10] + bytes(2) + pkt[12:20]))
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


# --- TUN writes: packets -> virtio-net frames (GRO in Python) --------------------------

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


# --- UDP: GSO send, GRO receive --------------------------------------------------------

def enable_udp_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        return True
    except OSError:
        return False


_SEG = struct.Struct("=H")
_GRO_CMSG = socket.CMSG_SPACE(4)


class UdpSender:
    """sendto for a list of datagrams to one address, as few UDP GSO sends as
    possible (runs of equal size, a shorter one may end a run). Falls back to
    one sendto per datagram for good if the kernel refuses UDP_SEGMENT."""

    def __init__(self, sock: socket.socket, gso: bool | None = None):
        self.sock = sock
        self.gso = mode() != "0" if gso is None else gso

    def send(self, datagrams: list[bytes], addr) -> int:
        """Returns the number of datagrams that failed to send."""
        sock = self.sock
        if not self.gso or len(datagrams) == 1:
            return self._plain(datagrams, addr)
        errors = 0
        i, n = 0, len(datagrams)
        while i < n:
            size = len(datagrams[i])
            j = i + 1
            limit = min(n, i + GSO_MAX_SEGMENTS, i + GSO_MAX_BYTES // size)
            while j < limit and len(datagrams[j]) == size:
                j += 1
            if j < limit and len(datagrams[j]) < size:
                j += 1                                  # a shorter one may end the run
            if j - i == 1:
                errors += self._plain(datagrams[i:j], addr)
            else:
                try:
                    sock.sendmsg([b"".join(datagrams[i:j])],
                                 [(SOL_UDP, UDP_SEGMENT, _SEG.pack(size))], 0, addr)
                except OSError as e:
                    if e.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                        self.gso = False               # no GSO on this path: never again
                        errors += self._plain(datagrams[i:], addr)
                        return errors
                    errors += j - i
            i = j
        return errors

    def _plain(self, datagrams, addr) -> int:
        errors = 0
        sendto = self.sock.sendto
        for d in datagrams:
            try:
                sendto(d, addr)
            except OSError:
                errors += 1
        return errors


class UdpReceiver:
    """Receive datagrams with UDP GRO: one recvmsg may return several
    datagrams of one sender, concatenated, with their size in a cmsg. The first
    receive blocks (up to the socket's SO_RCVTIMEO), the rest do not.

    Datagrams come back as memoryviews into the received buffer (bytes for a
    lone one), not copies: the caller decrypts them and keeps nothing."""

    def __init__(self, sock: socket.socket, bufsize: int = 65535 + 1024, gro: bool | None = None):
        self.sock = sock
        if gro is None:
            gro = mode() not in ("0", "nogro")
        self.gro = gro and enable_udp_gro(sock)
        self.bufsize = bufsize
        # one per receiver: each data-path thread has its own (poll objects are not shared)
        self._queued = select.poll()
        self._queued.register(sock, select.POLLIN)

    def recv_groups(self, limit: int = 128, block: bool = True) -> list[tuple[bytes, int, object]]:
        """(buffer, segment size, addr) per receive, until about `limit`
        datagrams: the buffer holds datagrams of `segment size` bytes back to
        back, the last possibly shorter (one datagram: its own length).
        session.Responder/Initiator.receive_groups take these as they are.
        `block` False: only what is queued, never waiting. After the first
        receive a zero-timeout poll asks whether more is queued, so a lone
        datagram ends the batch without the EAGAIN receive and its exception
        (tun.Tun.read_frames says why)."""
        out: list[tuple[bytes, int, object]] = []
        append = out.append
        recv = self.sock.recvmsg
        bufsize = self.bufsize
        flags = 0 if block else socket.MSG_DONTWAIT
        count = 0
        while count < limit:
            try:
                data, anc, _, addr = recv(bufsize, _GRO_CMSG, flags)
            except (BlockingIOError, InterruptedError, TimeoutError):
                break
            except OSError:
                break                                  # e.g. ICMP errors queued on the socket
            flags = socket.MSG_DONTWAIT
            n = len(data)
            seg = n
            for level, kind, cdata in anc:
                if level == SOL_UDP and kind == UDP_GRO and len(cdata) >= 4:
                    seg = int.from_bytes(cdata[:4], "little") or n
            seg = seg or 1                             # an empty datagram is one too
            append((data, seg, addr))
            count += -(-n // seg) or 1
            if len(out) == 1 and not self._queued.poll(0):
                break
        return out


# --- chunk records (wire.DATA_CHUNK) ----------------------------------------------------

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
    """A received chunk (type word `kind`, in wire.OPENABLE_KINDS) -> a run of one,
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


def chunks_as_segments(payloads: list[bytes]) -> list[bytes]:
    """A burst's DATA_CHUNK payloads (from tcp_chunks) -> its DATA_PARTIAL
    segments, for a receiver that does not take chunks or a burst metered
    packet by packet. [] for payloads no chunk run can hold."""
    run = chunk_run(payloads[0], chunk_kind(0, len(payloads)))
    if run is None:
        return []
    run.chunks.extend(payloads[1:])
    return run.segments()
