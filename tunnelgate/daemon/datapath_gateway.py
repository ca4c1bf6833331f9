"""The gateway's data path: its peers' datagrams to the TUN (udp_to_tun) and
the TUN's packets to its peers (tun_to_udp), over a DataPlane whose links are
BuyerLinks (one per peer) and whose receiver is the gateway's Responder.

A datagram is forwarded only from the tunnel address given to the peer whose
key opened it (its link's address, address6); a packet from the TUN finds
its peer by destination (the router's host routes, one per tunnel address).
The gateway enforces contracts: every burst is metered before it is
forwarded (GatewayEngine.outbound_burst / inbound_burst, per packet near a
contract's end), and a packet with no contract is held while a proposal
goes out (plane.on_control wakes the control thread for it).
"""

from __future__ import annotations

import time

from .. import offload as off
from ..meter import FORWARD, HELD
from .datapath import (
    CONTROL,
    DATA,
    DATA_CHUNK,
    DATA_PARTIAL,
    complete,
    ends,
    frames_to_bursts,
    receive_loop,
    send_loop,
    single_frame,
    write_frames,
)

CONTINUED = off.CONTINUED


def udp_to_tun(plane) -> None:
    """Peers -> TUN (see datapath.receive_loop)."""
    receive_loop(plane, udp_handler(plane))


def udp_handler(plane):
    """handle(groups, own_tun=False): open, check, meter and write to the TUN
    one batch of received datagrams (callers hold plane.udp_lock; own_tun: see
    datapath.write_frames)."""
    tun, stats = plane.tun, plane.stats
    links = plane.links.by_peer
    elock, engine = plane.elock, plane.engine
    outbound, outbound_burst = engine.outbound, engine.outbound_burst
    vnet = bool(tun.vnet_hdr_len)
    arrivals = off.Arrivals(gso=vnet)
    packet, chunks = arrivals.packet, arrivals.chunks
    receive_groups = plane.receiver.receive_groups
    lock, read_tun, tun_handle = plane.tun_lock, tun.read_frames, tun_handler(plane)
    saver, persist = plane.saver, plane.persist
    on_handshake, on_control = plane.on_handshake, plane.on_control

    def handle(groups, own_tun: bool = False) -> None:
        frames = []
        now = time.monotonic()
        wall = time.time()
        peer_of_src = {}
        for res in receive_groups(groups, now):
            if type(res) is not tuple:
                on_handshake(res, now)      # a handshake initiation: the control side answers
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
                link = links.get(peer)
                if link is not None and src == (link.address if run.ih == 20 else link.address6):
                    peer_of_src[src] = peer
                else:
                    stats["drop_spoofed"] += len(run.chunks)    # the rest, if any, counted bad
                    arrivals.drop_run()
            elif kind == DATA or kind == DATA_PARTIAL:
                # forward only what comes from an address we gave this peer
                v = payload[0] >> 4 if payload else 0
                link = links.get(peer)
                if v == 4 and len(payload) >= 20:
                    src, own = payload[12:16], link and link.address
                elif v == 6 and len(payload) >= 40:
                    src, own = payload[8:24], link and link.address6
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
            out, nbytes, npkts, held = _meter(
                items, peer_of_src, elock, outbound, outbound_burst, wall, vnet, stats)
            if engine.durable_seq != saver.written_seq:
                persist()           # a contract ended: on disk before the next one is used
            if out:
                stats["rx_packets"] += npkts
                stats["rx_bytes"] += nbytes
                write_frames(tun, out, own_tun, lock, read_tun, tun_handle)
        if frames or held:
            # a held packet waits for a proposal: sent now, not when the control thread next wakes
            on_control(frames)

    return handle


def _meter(items, peer_of_src, elock, outbound, outbound_burst, wall, vnet, stats):
    """Meter and decide chunk runs and coalesced groups (one engine call each
    when a contract covers them) and single packets; returns the TUN frames
    to write, in the order the packets came: a burst the contract does not
    cover whole is decided packet by packet where it stands (written after
    the rest of the batch, its packets reached the upstream host out of
    order, and TCP took the reordering for loss)."""
    out = []
    nbytes = npkts = 0
    held = False
    ChunkRun = off.ChunkRun

    def one_by_one(pkts, partial):
        # Per packet, which may hold the packet for a proposal. A held packet
        # is released later through write_batch, so it must carry a complete
        # checksum.
        nonlocal nbytes, npkts, held
        for pkt in pkts:
            pkt = complete(pkt, partial)
            src, dst = ends(pkt)
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
                    one_by_one(item.segments(), True)
                continue
            if t is list:
                src, dst = ends(item[0])
                total = sum(map(len, item))
                if outbound_burst(peer_of_src[src], dst, total, len(item), wall) == FORWARD:
                    out.append(off.gso_frame(item))
                    nbytes += total
                    npkts += len(item)
                else:
                    one_by_one([off.reseed_partial(p) for p in item], True)
                continue
            pkt, part = item
            if pkt[0] >> 4 == 4:            # ends(), written out: once per packet
                src, dst = pkt[12:16], pkt[16:20]
            else:
                src, dst = pkt[8:24], pkt[24:40]
            if outbound_burst(peer_of_src[src], dst, len(pkt), 1, wall) == FORWARD:
                out.append(single_frame(pkt, part, vnet))
                nbytes += len(pkt)
                npkts += 1
            else:
                one_by_one((pkt,), part)
    return out, nbytes, npkts, held


def tun_to_udp(plane) -> None:
    """TUN -> peers (see datapath.send_loop)."""
    send_loop(plane, tun_handler(plane), udp_handler(plane))


def tun_handler(plane):
    """handle(frames): seal and send one batch of TUN reads (callers hold plane.tun_lock)."""
    tun, stats, responder = plane.tun, plane.stats, plane.receiver
    lookup, chunky = plane.links.router.lookup, plane.links.chunky
    engine, elock, saver, persist = plane.engine, plane.elock, plane.saver, plane.persist
    inbound, inbound_burst = engine.inbound, engine.inbound_burst
    seal_batch, endpoint_of = responder.seal_batch, responder.endpoint
    sender = off.UdpSender(plane.sock)
    vnet = bool(tun.vnet_hdr_len)

    def handle(frames: list[bytes]) -> None:
        now = time.monotonic()
        wall = time.time()
        by_endpoint: dict = {}
        for pkts, kind in frames_to_bursts(frames, vnet, bool(chunky)):
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
            link = lookup(dst)          # the peer this tunnel address was given to
            if link is None:
                stats["drop_no_peer"] += len(pkts)
                continue
            peer = link.peer
            if kind == DATA_CHUNK and not link.chunks:
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
            persist()               # a contract ended: on disk before the next one is used
        for endpoint, datagrams in by_endpoint.items():
            errors = sender.send(datagrams, endpoint)
            if errors:
                stats["send_errors"] += errors

    return handle
