"""The data path: one blocking thread per direction and per daemon.

Each function runs a loop until `d.running` is false. They read the daemon's
attributes once into locals because attribute lookups per packet cost more
than the work they do; nothing logs.

Each direction's work brings packets the other way: a TUN write brings the
replies the kernel produced while taking it, a burst sent brings the peer's
ACKs. The thread that is busy takes those itself, holding the other thread's
wakeups meanwhile (tunnelgate.wakeups): waking a thread per ACK cost more CPU
than handling the ACK. d.tun_lock and d.udp_lock say which thread reads the
TUN or the socket at a time, so reads and sends keep their order.

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
from ..meter import FORWARD, HELD

DATA, DATA_PARTIAL, DATA_CHUNK, CONTROL = sess.DATA, sess.DATA_PARTIAL, sess.DATA_CHUNK, sess.CONTROL
CONTINUED, NEW = off.CONTINUED, off.NEW
VNET_LEN = off.VNET_LEN
TUN_READS = 64          # TUN reads per batch (each up to a 64 KB burst)
UDP_DATAGRAMS = 256     # datagrams per receive batch


# --- helpers --------------------------------------------------------------------------

def _frames_to_bursts(frames: list[bytes], vnet: bool, chunks: bool) -> list[tuple[list[bytes], int]]:
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


def _complete(pkt: bytes, partial: bool) -> bytes:
    """A DATA_PARTIAL packet with its checksum finished (for paths that hand
    packets to code expecting complete ones: held packets, non-offload TUNs)."""
    if not partial:
        return pkt
    return off.complete_partial(pkt)


def _ends(pkt) -> tuple[bytes, bytes]:
    """(source, destination) address bytes of an IPv4 or IPv6 packet."""
    if pkt[0] >> 4 == 4:
        return pkt[12:16], pkt[16:20]
    return pkt[8:24], pkt[24:40]


def _link_scope6(pkt) -> bool:
    """An IPv6 packet to a multicast (ff00::/8) or link-local (fe80::/10) address."""
    return pkt[24] == 0xFF or (pkt[24] == 0xFE and pkt[25] & 0xC0 == 0x80)


def _single_frame(pkt: bytes, partial: bool, vnet: bool) -> bytes:
    if not vnet:
        return _complete(pkt, partial)
    return (off.partial_vnet(pkt) if partial else off.VNET_PLAIN) + pkt


def _tun_frames(items: list, vnet: bool) -> list[bytes]:
    """offload.Arrivals items -> TUN frames (GSO frames when the TUN takes them)."""
    if not vnet:
        return [_complete(p, part) for p, part in items]
    out = []
    ChunkRun = off.ChunkRun
    for item in items:
        if type(item) is ChunkRun:
            out.append(item.frame_parts())
        elif type(item) is list:
            out.append(off.gso_frame(item))
        else:
            out.append(_single_frame(item[0], item[1], True))
    return out


# --- gateway ----------------------------------------------------------------------------

def gateway_udp_to_tun(d) -> None:
    """Peers -> TUN (see _receive_loop)."""
    _receive_loop(d, _gateway_udp_handler(d))


def _gateway_udp_handler(d):
    """handle(groups, own_tun=False): open, check, meter and write to the TUN
    one batch of received datagrams (callers hold d.udp_lock; own_tun: see
    _write_frames)."""
    responder, tun, stats = d.responder, d.tun, d.stats
    addr_of, addr6_of = d.addr_of, d.addr6_of
    elock, engine = d.elock, d.engine
    outbound, outbound_burst = engine.outbound, engine.outbound_burst
    vnet = bool(tun.vnet_hdr_len)
    arrivals = off.Arrivals(gso=vnet)
    packet, chunks = arrivals.packet, arrivals.chunks
    receive_groups = responder.receive_groups
    lock, read_tun, tun_handle = d.tun_lock, tun.read_frames, _gateway_tun_handler(d)
    saver = d.saver

    def handle(groups, own_tun: bool = False) -> None:
        frames = []
        now = time.monotonic()
        wall = time.time()
        peer_of_src = {}
        for res in receive_groups(groups, now):
            if type(res) is not tuple:
                d.handshakes.submit(res)    # an INIT past MAC1: to the handshake worker (daemon/handshakes.py)
                continue
            peer, kind, payload = res
            if kind & 0xFF == DATA_CHUNK:
                # payload: the chunks of one run (session.Responder.receive_groups)
                got = chunks(payload, kind, peer)
                if got == CONTINUED:
                    continue        # the run's first chunk, same peer and headers, was checked
                if not got:
                    stats["drop_bad_chunk"] += len(payload)
                    continue
                run = arrivals.run
                src = run.src
                if src == (addr_of if run.ih == 20 else addr6_of).get(peer):
                    peer_of_src[src] = peer
                else:
                    stats["drop_spoofed"] += len(run.chunks)    # the rest, if any, counted bad
                    arrivals.drop_run()
            elif kind == DATA or kind == DATA_PARTIAL:
                # forward only what comes from an address we gave this peer
                v = payload[0] >> 4 if payload else 0
                if v == 4 and len(payload) >= 20:
                    src, own = payload[12:16], addr_of.get(peer)
                elif v == 6 and len(payload) >= 40:
                    src, own = payload[8:24], addr6_of.get(peer)
                    if own is None:
                        stats["drop_ipv6_off"] += 1
                        continue
                else:
                    stats["drop_not_ip"] += 1
                    continue
                if src == own:
                    packet(payload, kind == DATA_PARTIAL and off.partial_ok(payload))
                    peer_of_src[src] = peer
                else:
                    stats["drop_spoofed"] += 1
            elif kind == CONTROL:
                stats["control_rx"] += 1
                frames.append((peer, payload))
        if arrivals.bad:
            stats["drop_bad_chunk"] += arrivals.bad
            arrivals.bad = 0
        held = False
        items = arrivals.done()
        if items:
            out, nbytes, npkts, held = _gateway_meter(
                items, peer_of_src, elock, outbound, outbound_burst, wall, vnet, stats)
            if engine.durable_seq != saver.written_seq:
                d.persist()         # a contract ended: on disk before the next one is used
            if out:
                stats["rx_packets"] += npkts
                stats["rx_bytes"] += nbytes
                _write_frames(tun, out, own_tun, lock, read_tun, tun_handle)
        if frames or held:
            # a held packet waits for a proposal: send it now, not at the next tick
            d.loop.call_soon_threadsafe(d._control_in, frames)

    return handle


def _gateway_meter(items, peer_of_src, elock, outbound, outbound_burst, wall, vnet, stats):
    """Meter and decide chunk runs and coalesced groups (one engine call each
    when a contract covers them) and single packets; returns the TUN frames
    to write."""
    out = []
    nbytes = npkts = 0
    held = False
    slow = []                       # packets the burst call did not cover
    ChunkRun = off.ChunkRun
    with elock:
        for item in items:
            t = type(item)
            if t is ChunkRun:
                total = item.wire_len()
                n = len(item.chunks)
                if outbound_burst(peer_of_src[item.src], item.dst, total, n, wall) == FORWARD:
                    out.append(item.frame_parts())
                    nbytes += total
                    npkts += n
                else:
                    slow.extend((p, True) for p in item.segments())
                continue
            if t is list:
                src, dst = _ends(item[0])
                total = sum(map(len, item))
                if outbound_burst(peer_of_src[src], dst, total, len(item), wall) == FORWARD:
                    out.append(off.gso_frame(item))
                    nbytes += total
                    npkts += len(item)
                else:
                    slow.extend((off.reseed_partial(p), True) for p in item)
                continue
            pkt, part = item
            if pkt[0] >> 4 == 4:            # _ends(), written out: once per packet
                src, dst = pkt[12:16], pkt[16:20]
            else:
                src, dst = pkt[8:24], pkt[24:40]
            if outbound_burst(peer_of_src[src], dst, len(pkt), 1, wall) == FORWARD:
                out.append(_single_frame(pkt, part, vnet))
                nbytes += len(pkt)
                npkts += 1
            else:
                slow.append((pkt, part))
        # Not covered: per packet, which may hold the packet for a proposal.
        # A held packet is released later through write_batch, so it must
        # carry a complete checksum.
        for pkt, part in slow:
            pkt = _complete(pkt, part)
            src, dst = _ends(pkt)
            verdict = outbound(peer_of_src[src], dst, len(pkt), pkt, wall)
            if verdict == FORWARD:
                out.append(off.VNET_PLAIN + pkt if vnet else pkt)
                nbytes += len(pkt)
                npkts += 1
            elif verdict == HELD:
                stats["held"] += 1
                held = True
            else:
                stats["drop_no_contract"] += 1
    return out, nbytes, npkts, held


def gateway_tun_to_udp(d) -> None:
    """TUN -> peers (see _send_loop)."""
    _send_loop(d, _gateway_tun_handler(d), _gateway_udp_handler(d))


def _receive_loop(d, handle) -> None:
    """The udp-to-tun thread. d.udp_lock is held by whichever thread receives
    from the socket and handles what it got: this one, or the tun-to-udp
    thread taking the datagrams its own sends brought back (_send_loop)."""
    recv = off.UdpReceiver(d.sock).recv_groups
    lock, wakeups, timeout = d.udp_lock, d.udp_wakeups, d.warmth.timeout
    while d.running:
        with lock:
            groups = recv(UDP_DATAGRAMS, False)
            if groups:
                handle(groups)
                continue
        wakeups.wait(timeout(time.monotonic()))


def _send_loop(d, handle, handle_datagrams, settle=None) -> None:
    """The tun-to-udp thread. d.tun_lock is held by whichever thread reads the
    TUN and sends what it read, so reads and sends stay in order. While it
    works, the datagrams that arrive (the peer's ACKs for what it sends) do
    not wake the udp-to-tun thread: this thread takes them after each batch
    (tunnelgate.wakeups). settle(): bookkeeping `handle` left for after
    that, so an answer already queued is not kept waiting for it."""
    tun, lock = d.tun, d.tun_lock
    read = tun.read_frames
    recv = off.UdpReceiver(d.sock).recv_groups
    udp_lock, udp_wakeups, timeout = d.udp_lock, d.udp_wakeups, d.warmth.timeout
    while d.running:
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
        # what its own TUN writes produce (see _take_replies)
        if not tun.wait_readable(timeout(time.monotonic())) and tun.closed:
            time.sleep(0.05)


def _write_frames(tun, frames, own_tun: bool, lock, read, handle, settle=None) -> None:
    """Write received packets to the TUN and take the replies that produced
    (_take_replies), holding the tun-to-udp thread's wakeups meanwhile. With
    own_tun the caller is that thread, taking datagrams after its own batch
    (_send_loop): nobody waits on the TUN then, and it reads the replies next
    anyway, so the write goes alone (two epoll_ctl calls fewer per batch)."""
    if own_tun:
        tun.write_frames(frames)
        return
    tun.hold_wakeups()
    tun.write_frames(frames)
    _take_replies(lock, read, handle, settle)
    tun.release_wakeups()


def _take_replies(lock, read, handle, settle=None) -> None:
    """Called right after a TUN write of received datagrams, between
    tun.hold_wakeups() and tun.release_wakeups(). A reply the kernel produced
    while taking the write (a TCP ACK from a local or nearby receiver, a ping
    answered) is already queued on the TUN: seal and send it from this
    thread, whose caches are warm, instead of waking the tun-to-udp thread,
    which on an idle machine costs a wake-up of the other (halted) CPU and
    cold caches (idle ping RTT -0.2 to -0.3 ms), and under load one wake-up
    per ACK (measured: the gateway's tun-to-udp thread woke 3000 times/s
    during an upload, 0.16 CPU; with the hold 600 times/s, 0.04 CPU).
    Skipped when d.tun_lock is taken: the tun-to-udp thread is reading the
    TUN (it may be this thread, handling datagrams it took in _send_loop) and
    gets the replies next. settle: as in _send_loop."""
    if lock.acquire(False):
        try:
            frames = read(TUN_READS, 0)
            if frames:
                handle(frames)
                if settle is not None:
                    settle()
        finally:
            lock.release()


def _gateway_tun_handler(d):
    """handle(frames): seal and send one batch of TUN reads (callers hold _tun_lock)."""
    sock, responder, tun, stats = d.sock, d.responder, d.tun, d.stats
    peer_of = d.peer_of
    elock, inbound, inbound_burst = d.elock, d.engine.inbound, d.engine.inbound_burst
    seal_batch, endpoint_of = responder.seal_batch, responder.endpoint
    sender = off.UdpSender(sock)
    vnet = bool(tun.vnet_hdr_len)
    chunk_peers = d.chunk_peers
    engine, saver = d.engine, d.saver

    def handle(frames: list[bytes]) -> None:
        now = time.monotonic()
        wall = time.time()
        by_endpoint: dict = {}
        for pkts, kind in _frames_to_bursts(frames, vnet, bool(chunk_peers)):
            if not pkts:
                stats["drop_bad_gso"] += 1
                continue
            first = pkts[0]
            v = first[0] >> 4 if first else 0
            if v == 4 and len(first) >= 20:
                src, dst = first[12:16], first[16:20]
            elif v == 6 and len(first) >= 40:
                src, dst = first[8:24], first[24:40]
            else:
                stats["drop_not_ip"] += len(pkts)
                continue
            peer = peer_of.get(dst)
            if peer is None:
                stats["drop_no_peer"] += len(pkts)
                continue
            if kind == DATA_CHUNK and peer not in chunk_peers:
                pkts, kind = off.chunks_as_segments(pkts), DATA_PARTIAL
            total = sum(map(len, pkts))
            with elock:
                if inbound_burst(peer, src, total, wall) != FORWARD:
                    # near a contract's end: decide per packet (overshoot at most one packet)
                    if kind == DATA_CHUNK:
                        pkts, kind = off.chunks_as_segments(pkts), DATA_PARTIAL
                    n = len(pkts)
                    pkts = [p for p in pkts if inbound(peer, src, len(p), wall) == FORWARD]
                    if len(pkts) < n:
                        stats["drop_no_contract_in"] += n - len(pkts)
                    total = sum(map(len, pkts))
            if not pkts:
                continue
            datagrams = seal_batch(peer, kind, pkts, now)
            endpoint = endpoint_of(peer)
            if not datagrams or endpoint is None:
                stats["drop_no_session"] += len(pkts)
                continue
            by_endpoint.setdefault(endpoint, []).extend(datagrams)
            stats["tx_bytes"] += total
            stats["tx_packets"] += len(pkts)
            if kind == DATA_CHUNK:
                stats["tx_chunks"] += len(pkts)
        if engine.durable_seq != saver.written_seq:
            d.persist()             # a contract ended: on disk before the next one is used
        for endpoint, datagrams in by_endpoint.items():
            errors = sender.send(datagrams, endpoint)
            if errors:
                stats["send_errors"] += errors

    return handle


# --- client -----------------------------------------------------------------------------

def _wake(d) -> None:
    """A renewal request is waiting: send it now rather than at the next timer tick,
    at most one wake-up in flight."""
    if not d.wake_pending:
        d.wake_pending = True
        d.loop.call_soon_threadsafe(d.wake)


def client_udp_to_tun(d) -> None:
    """The gateway -> TUN (see _receive_loop)."""
    _receive_loop(d, _client_udp_handler(d))


def _client_udp_handler(d):
    """handle(groups, own_tun=False): open, meter and write to the TUN one
    batch of received datagrams (callers hold d.udp_lock; own_tun: see
    _write_frames)."""
    initiator, tun, stats = d.initiator, d.tun, d.stats
    DONE = sess.HANDSHAKE_DONE
    elock, inbound, engine, fits = d.elock, d.engine.inbound, d.engine, d.engine.fits
    vnet = bool(tun.vnet_hdr_len)
    arrivals = off.Arrivals(gso=vnet)
    packet, chunks = arrivals.packet, arrivals.chunks
    receive_groups, lock = initiator.receive_groups, d.lock
    tun_lock, read_tun = d.tun_lock, tun.read_frames
    tun_handle, tun_settle = _client_tun_handler(d)

    def handle(groups, own_tun: bool = False) -> None:
        frames = []
        now = time.monotonic()
        wall = time.time()
        npkts = nbytes = 0
        by_src: dict[bytes, list[int]] = {}
        # a handshake response is control plane: processed under the daemon's lock
        for kind, payload, addr in receive_groups(groups, now, lock):
            if addr[:2] != d.endpoint:
                # authenticated traffic from a new address: the gateway moved
                d.endpoint = addr[:2]
                d.loop.call_soon_threadsafe(d._spawn, d._gateway_moved())
            if kind & 0xFF == DATA_CHUNK:
                # payload: the chunks of one run (session.Initiator.receive_groups)
                bad = arrivals.bad
                got = chunks(payload, kind)
                if not got:
                    stats["drop_bad_chunk"] += len(payload)
                    continue
                if got == NEW:      # a continued run has the same source
                    run_lengths = by_src.setdefault(arrivals.run.src, [])
                if arrivals.bad != bad:
                    payload = payload[:len(payload) - (arrivals.bad - bad)]
                lengths = list(map(len, payload))
                run_lengths.extend(lengths)
                npkts += len(lengths)
                nbytes += sum(lengths)
                continue
            if kind == DATA or kind == DATA_PARTIAL:
                v = payload[0] >> 4 if payload else 0
                if v == 4 and len(payload) >= 20:
                    by_src.setdefault(payload[12:16], []).append(len(payload))
                elif v == 6 and len(payload) >= 40:
                    by_src.setdefault(payload[8:24], []).append(len(payload))
                else:
                    stats["drop_not_ip"] += 1
                    continue
                packet(payload, kind == DATA_PARTIAL and off.partial_ok(payload))
            elif kind == DONE:
                d.loop.call_soon_threadsafe(d._spawn, d._handshake_done(payload))
            elif kind == CONTROL:
                stats["control_rx"] += 1
                frames.append(payload)
                continue
            else:
                continue
            npkts += 1
            nbytes += len(payload)
        if arrivals.bad:
            stats["drop_bad_chunk"] += arrivals.bad
            arrivals.bad = 0
        items = arrivals.done()
        if items:
            _write_frames(tun, _tun_frames(items, vnet), own_tun, tun_lock, read_tun, tun_handle, tun_settle)
            if by_src:
                # the client meters and never blocks, so after the write (as it
                # sends before metering): one call per source per batch
                with elock:
                    for src, lengths in by_src.items():
                        total = sum(lengths)
                        if fits(src, total, wall):
                            inbound(src, total, wall)
                        else:
                            for n in lengths:
                                inbound(src, n, wall)
                if engine.has_output:
                    _wake(d)
            stats["rx_packets"] += npkts
            stats["rx_bytes"] += nbytes
        if frames:
            d.loop.call_soon_threadsafe(d._control_in, frames)

    return handle


def client_tun_to_udp(d) -> None:
    """TUN -> the gateway (see _send_loop)."""
    handle, settle = _client_tun_handler(d)
    _send_loop(d, handle, _client_udp_handler(d), settle)


def _client_tun_handler(d):
    """(handle, settle): handle(frames) seals and sends one batch of TUN reads;
    settle() then meters what was sent. The client only counts (the gateway
    enforces), so a packet need not wait for its bookkeeping, cold on an idle
    CPU, nor the answer the datagrams taken right after the send may hold
    (_send_loop). Both are called under d.tun_lock."""
    sock, initiator, tun, stats = d.sock, d.initiator, d.tun, d.stats
    elock, outbound_burst, engine, fits = d.elock, d.engine.outbound_burst, d.engine, d.engine.fits
    seal_batch = initiator.seal_batch
    sender = off.UdpSender(sock)
    vnet = bool(tun.vnet_hdr_len)
    sent: list[tuple[bytes, list[bytes]]] = []      # (destination, packets) not yet metered

    def handle(frames: list[bytes]) -> None:
        now = time.monotonic()
        bursts = _frames_to_bursts(frames, vnet, d.gateway_chunks)
        ipv6 = d.address6 is not None
        datagrams = []
        for pkts, kind in bursts:
            if not pkts:
                stats["drop_bad_gso"] += 1
                continue
            first = pkts[0]
            v = first[0] >> 4 if first else 0
            if v == 4 and len(first) >= 20:
                dst = first[16:20]
            else:
                if v != 6 or len(first) < 40:
                    why = "drop_not_ip"
                elif _link_scope6(first):
                    why = "drop_link_local6"     # the TUN's own neighbour discovery, MLD
                elif not ipv6:
                    why = "drop_ipv6_off"        # the gateway would drop it: it never leaves
                else:
                    why = None
                    dst = first[24:40]
                if why:
                    stats[why] += len(pkts)
                    continue
            sealed = seal_batch(kind, pkts, now)
            if len(sealed) < len(pkts):
                stats["drop_no_session"] += len(pkts) - len(sealed)
                continue
            datagrams.extend(sealed)
            sent.append((dst, pkts))
            if kind == DATA_CHUNK:
                stats["tx_chunks"] += len(pkts)
        if datagrams:
            errors = sender.send(datagrams, d.endpoint)
            if errors:
                stats["send_errors"] += errors

    def settle() -> None:
        if not sent:
            return
        wall = time.time()
        npkts = nbytes = 0
        with elock:
            for dst, pkts in sent:
                total = sum(map(len, pkts))
                npkts += len(pkts)
                nbytes += total
                if fits(dst, total, wall):
                    outbound_burst(dst, total, len(pkts), wall)
                else:
                    for p in pkts:
                        outbound_burst(dst, len(p), 1, wall)
        sent.clear()
        if engine.has_output:
            _wake(d)
        stats["tx_packets"] += npkts
        stats["tx_bytes"] += nbytes

    return handle, settle
