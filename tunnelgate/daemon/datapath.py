"""The data path: one blocking thread per direction and per daemon, over a
DataPlane (dataplane.py). This module holds what both roles share: the two
loops and the TUN frame helpers; each role's handlers, which do the work of
one batch, are in datapath_gateway.py and datapath_client.py.

Each loop runs until `plane.running` is false. The handlers read the plane's
attributes once into locals because attribute lookups per packet cost more
than the work they do; nothing logs.

Each direction's work brings packets the other way: a TUN write brings the
replies the kernel produced while taking it, a burst sent brings the peer's
ACKs. The thread that is busy takes those itself, holding the other thread's
wakeups meanwhile (tunnelgate.wakeups): waking a thread per ACK cost more CPU
than handling the ACK. plane.tun_lock and plane.udp_lock say which thread reads
the TUN or the socket at a time, so reads and sends keep their order.

Offloads (tunnelgate.offload): a TUN read may be a 64 KB TCP burst, cut into
MSS-sized segments here, each sealed as its own datagram (DATA_PARTIAL: the
TCP checksum is left to the receiving kernel) and sent with UDP GSO; the
receiver gets several datagrams per recvmsg (UDP GRO; the session opens a
buffer's consecutive chunks of one burst as one run) and writes in-order
segments of one flow back to its TUN as one GSO frame. Every path falls back
to one packet per syscall when the kernel lacks the feature.

Metering is per burst (one engine call per TSO read or coalesced group) but
counts what the wire carries: the sum of the segments' IP lengths.

IPv6 (a dual-stack tunnel) takes the same paths: TSO6 bursts, DATA_PARTIAL,
chunk records, and the Python coalescing of plain segments (from a peer that
sends no chunks) into GSO frames.
"""

from __future__ import annotations

import time

from .. import offload as off
from .. import session as sess

DATA, DATA_PARTIAL, DATA_CHUNK, CONTROL = sess.DATA, sess.DATA_PARTIAL, sess.DATA_CHUNK, sess.CONTROL
VNET_LEN = off.VNET_LEN
TUN_READS = 64          # TUN reads per batch (each up to a 64 KB burst)
UDP_DATAGRAMS = 256     # datagrams per receive batch


# --- helpers --------------------------------------------------------------------------

def frames_to_bursts(frames: list[bytes], vnet: bool, chunks: bool) -> list[tuple[list[bytes], int]]:
    """TUN reads -> (transport payloads, kind) per read: DATA_CHUNK payloads
    when `chunks`, else IP packets (DATA or DATA_PARTIAL)."""
    if not vnet:
        return [([f], DATA) for f in frames]
    split = off.frame_payloads
    # a frame whose virtio-net header starts with zero flags and GSO type (no
    # checksum to finish, no burst: a ping, most UDP) is its packet; taken here
    # without the two calls split_frame costs, ≈ 25 µs on a CPU woken from idle
    # (split checks the lengths of the rest; a frame too short for its header gets ([], DATA))
    return [([f[VNET_LEN:]], DATA) if len(f) > VNET_LEN and not f[0] and not f[1] else split(f, chunks)
            for f in frames]


def complete(pkt: bytes, partial: bool) -> bytes:
    """A DATA_PARTIAL packet with its checksum finished (for paths that hand
    packets to code expecting complete ones: held packets, non-offload TUNs)."""
    if not partial:
        return pkt
    return off.complete_partial(pkt)


def ends(pkt) -> tuple[bytes, bytes]:
    """(source, destination) address bytes of an IPv4 or IPv6 packet."""
    if pkt[0] >> 4 == 4:
        return pkt[12:16], pkt[16:20]
    return pkt[8:24], pkt[24:40]


def link_scope6(pkt) -> bool:
    """An IPv6 packet to a multicast (ff00::/8) or link-local (fe80::/10) address."""
    return pkt[24] == 0xFF or (pkt[24] == 0xFE and pkt[25] & 0xC0 == 0x80)


def single_frame(pkt: bytes, partial: bool, vnet: bool) -> bytes:
    if not vnet:
        return complete(pkt, partial)
    return (off.partial_vnet(pkt) if partial else off.VNET_PLAIN) + pkt


def tun_frames(items: list, vnet: bool) -> list[bytes]:
    """offload.Arrivals items -> TUN frames (GSO frames when the TUN takes them)."""
    if not vnet:
        return [complete(p, part) for p, part in items]
    out = []
    ChunkRun = off.ChunkRun
    for item in items:
        if type(item) is ChunkRun:
            out.append(item.frame_parts())
        elif type(item) is list:
            out.append(off.gso_frame(item))
        else:
            out.append(single_frame(item[0], item[1], True))
    return out


# --- the loops --------------------------------------------------------------------------

def receive_loop(plane, handle) -> None:
    """The udp-to-tun thread. plane.udp_lock is held by whichever thread receives
    from the socket and handles what it got: this one, or the tun-to-udp
    thread taking the datagrams its own sends brought back (send_loop)."""
    recv = off.UdpReceiver(plane.sock).recv_groups
    lock, wakeups, timeout = plane.udp_lock, plane.udp_wakeups, plane.warmth.timeout
    while plane.running:
        with lock:
            groups = recv(UDP_DATAGRAMS, False)
            if groups:
                handle(groups)
                continue
        wakeups.wait(timeout(time.monotonic()))


def send_loop(plane, handle, handle_datagrams, settle=None) -> None:
    """The tun-to-udp thread. plane.tun_lock is held by whichever thread reads the
    TUN and sends what it read, so reads and sends stay in order. While it
    works, the datagrams that arrive (the peer's ACKs for what it sends) do
    not wake the udp-to-tun thread: this thread takes them after each batch
    (tunnelgate.wakeups). settle(): bookkeeping `handle` left for after
    that, so an answer already queued is not kept waiting for it."""
    tun, lock = plane.tun, plane.tun_lock
    read = tun.read_frames
    recv = off.UdpReceiver(plane.sock).recv_groups
    udp_lock, udp_wakeups, timeout = plane.udp_lock, plane.udp_wakeups, plane.warmth.timeout
    while plane.running:
        with lock:
            frames = read(TUN_READS, 0)
            if frames:
                udp_wakeups.hold()
                handle(frames)
                if udp_lock.acquire(False):
                    try:
                        groups = recv(UDP_DATAGRAMS, False)
                        if groups:
                            handle_datagrams(groups, True)
                    finally:
                        udp_lock.release()
                udp_wakeups.release()
                if settle is not None:
                    settle()
                continue
        # wait outside the lock: meanwhile the udp-to-tun thread may take
        # what its own TUN writes produce (see take_replies)
        if not tun.wait_readable(timeout(time.monotonic())) and tun.closed:
            time.sleep(0.05)


def write_frames(tun, frames, own_tun: bool, lock, read, handle, settle=None) -> None:
    """Write received packets to the TUN and take the replies that produced
    (take_replies), holding the tun-to-udp thread's wakeups meanwhile. With
    own_tun the caller is that thread, taking datagrams after its own batch
    (send_loop): nobody waits on the TUN then, and it reads the replies next
    anyway, so the write goes alone (two epoll_ctl calls fewer per batch)."""
    if own_tun:
        tun.write_frames(frames)
        return
    tun.hold_wakeups()
    tun.write_frames(frames)
    take_replies(lock, read, handle, settle)
    tun.release_wakeups()


def take_replies(lock, read, handle, settle=None) -> None:
    """Called right after a TUN write of received datagrams, between
    tun.hold_wakeups() and tun.release_wakeups(). A reply the kernel produced
    while taking the write (a TCP ACK from a local or nearby receiver, a ping
    answered) is already queued on the TUN: seal and send it from this
    thread, whose caches are warm, instead of waking the tun-to-udp thread,
    which on an idle machine costs a wake-up of the other (halted) CPU and
    cold caches (idle ping RTT -0.2 to -0.3 ms), and under load one wake-up
    per ACK (measured: the gateway's tun-to-udp thread woke 3000 times/s
    during an upload, 0.16 CPU; with the hold 600 times/s, 0.04 CPU).
    Skipped when plane.tun_lock is taken: the tun-to-udp thread is reading the
    TUN (it may be this thread, handling datagrams it took in send_loop) and
    gets the replies next. settle: as in send_loop."""
    if lock.acquire(False):
        try:
            frames = read(TUN_READS, 0)
            if frames:
                handle(frames)
                if settle is not None:
                    settle()
        finally:
            lock.release()
