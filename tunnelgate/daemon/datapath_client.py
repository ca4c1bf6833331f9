"""The client's data path: its links' datagrams to the TUN (udp_to_tun) and
the TUN's packets to the gateway each destination routes to (tun_to_udp),
over a DataPlane whose links are SellerLinks.

Today a client has one link, to which every destination routes (0.0.0.0/0,
::/0), and its receiver is that link's Initiator; the send side already
picks the link per burst by destination (plane.links.router), so routing
destinations across gateways needs only more links and their routes, and a
receiver that tells their datagrams apart.

The client only counts what it sends and receives (the gateway enforces):
it meters after the send or the TUN write, never holding a packet back.
"""

from __future__ import annotations

import time

from .. import offload as off
from .. import session as sess
from .datapath import (
    CONTROL,
    DATA,
    DATA_CHUNK,
    DATA_PARTIAL,
    frames_to_bursts,
    link_scope6,
    receive_loop,
    send_loop,
    tun_frames,
    write_frames,
)

NEW = off.NEW


def udp_to_tun(plane) -> None:
    """The gateway -> TUN (see datapath.receive_loop)."""
    receive_loop(plane, udp_handler(plane))


def udp_handler(plane):
    """handle(groups, own_tun=False): open, meter and write to the TUN one
    batch of received datagrams (callers hold plane.udp_lock; own_tun: see
    datapath.write_frames)."""
    receiver, tun, stats, links = plane.receiver, plane.tun, plane.stats, plane.links
    DONE = sess.HANDSHAKE_DONE
    engine, elock = plane.engine, plane.elock
    inbound, fits = engine.inbound, engine.fits
    vnet = bool(tun.vnet_hdr_len)
    arrivals = off.Arrivals(gso=vnet)
    packet, chunks = arrivals.packet, arrivals.chunks
    receive_groups, lock = receiver.receive_groups, plane.session_lock
    tun_lock, read_tun = plane.tun_lock, tun.read_frames
    tun_handle, tun_settle = tun_handler(plane)
    on_control, on_session, on_moved, on_output = plane.on_control, plane.on_session, plane.on_moved, plane.on_output

    def handle(groups, own_tun: bool = False) -> None:
        frames = []
        now = time.monotonic()
        wall = time.time()
        npkts = nbytes = 0
        by_src: dict[bytes, list[int]] = {}
        peer = None
        # a handshake response is control plane: processed under the session lock
        for peer, kind, payload in receive_groups(groups, now, lock):
            if kind & 0xFF == DATA_CHUNK:
                # payload: the chunks of one run (session._open_groups)
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
                on_session(links.get(peer), payload)
            elif kind == CONTROL:
                stats["control_rx"] += 1
                frames.append((peer, payload))
                continue
            else:
                continue
            npkts += 1
            nbytes += len(payload)
        if peer is not None:
            link = links.get(peer)
            source = receiver.source
            if link is not None and source is not None and source[:2] != link.endpoint:
                # authenticated traffic from a new address: the gateway moved
                link.endpoint = source[:2]
                on_moved(link)
        if arrivals.bad:
            stats["drop_bad_chunk"] += arrivals.bad
            arrivals.bad = 0
        items = arrivals.done()
        if items:
            write_frames(tun, tun_frames(items, vnet), own_tun, tun_lock, read_tun, tun_handle, tun_settle)
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
                    on_output()     # a renewal to ask for: now, not when the control thread next wakes
            stats["rx_packets"] += npkts
            stats["rx_bytes"] += nbytes
        if frames:
            on_control(frames)

    return handle


def tun_to_udp(plane) -> None:
    """TUN -> the gateway (see datapath.send_loop)."""
    handle, settle = tun_handler(plane)
    send_loop(plane, handle, udp_handler(plane), settle)


def tun_handler(plane):
    """(handle, settle): handle(frames) seals and sends one batch of TUN reads,
    each burst to the link its destination routes to; settle() then meters
    what was sent. The client only counts (the gateway enforces), so a packet
    need not wait for its bookkeeping, cold on an idle CPU, nor the answer the
    datagrams taken right after the send may hold (datapath.send_loop). Both
    are called under plane.tun_lock."""
    tun, stats = plane.tun, plane.stats
    lookup, chunky = plane.links.router.lookup, plane.links.chunky
    engine, elock = plane.engine, plane.elock
    outbound_burst, fits, on_output = engine.outbound_burst, engine.fits, plane.on_output
    sender = off.UdpSender(plane.sock)
    vnet = bool(tun.vnet_hdr_len)
    sent: list[tuple[bytes, list[bytes]]] = []      # (destination, packets) not yet metered

    def handle(frames: list[bytes]) -> None:
        now = time.monotonic()
        bursts = frames_to_bursts(frames, vnet, bool(chunky))
        by_link: dict = {}
        for pkts, kind in bursts:
            if not pkts:
                stats["drop_bad_gso"] += 1
                continue
            first = pkts[0]
            v = first[0] >> 4 if first else 0
            if v == 4 and len(first) >= 20:
                dst = first[16:20]
                link = lookup(dst)
                why = "drop_no_route" if link is None else None
            else:
                link = None
                if v != 6 or len(first) < 40:
                    why = "drop_not_ip"
                elif link_scope6(first):
                    why = "drop_link_local6"     # the TUN's own neighbour discovery, MLD
                else:
                    dst = first[24:40]
                    link = lookup(dst)
                    if link is None:
                        why = "drop_no_route"
                    elif link.address6 is None:
                        why = "drop_ipv6_off"    # its gateway would drop it: it never leaves
                    else:
                        why = None
            if why:
                stats[why] += len(pkts)
                continue
            if kind == DATA_CHUNK and not link.chunks:
                pkts, kind = off.chunks_as_segments(pkts), DATA_PARTIAL
            sealed = link.session.seal_batch(kind, pkts, now)
            if len(sealed) < len(pkts):
                stats["drop_no_session"] += len(pkts) - len(sealed)
                continue
            got = by_link.get(link)
            if got is None:
                by_link[link] = sealed
            else:
                got.extend(sealed)
            sent.append((dst, pkts))
            if kind == DATA_CHUNK:
                stats["tx_chunks"] += len(pkts)
        for link, datagrams in by_link.items():
            errors = sender.send(datagrams, link.endpoint)
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
            on_output()
        stats["tx_packets"] += npkts
        stats["tx_bytes"] += nbytes

    return handle, settle
