"""The data path: one blocking thread per direction and per daemon.

Each function runs a loop until `d.running` is false. They read the daemon's
attributes once into locals because attribute lookups per packet cost more
than the work they do; per-packet work is kept to what must be per packet
(AEAD, the contract meter) and nothing logs.
"""

from __future__ import annotations

import select
import time

from .. import session as sess
from ..meter import FORWARD, HELD
from .base import recv_batch

RECV_SIZE = 65535


def gateway_udp_to_tun(d) -> None:
    sock, responder, tun, stats = d.sock, d.responder, d.tun, d.stats
    addr_of = d.addr_of
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    DATA, CONTROL = sess.DATA, sess.CONTROL
    elock, outbound = d.elock, d.engine.outbound
    frames = []
    while d.running:
        if not poller.poll(500):
            continue
        now = time.monotonic()
        wall = time.time()
        out = []
        held = False
        for datagram, addr in recv_batch(sock, RECV_SIZE):
            res = responder.receive(datagram, now, addr)
            if res is None:
                continue
            if isinstance(res, sess.Handshake):
                d._handshake(res, now)
                continue
            peer, kind, payload = res
            if kind == DATA:
                # forward only what comes from the address we gave this peer
                if len(payload) >= 20 and payload[0] >> 4 == 4:
                    if payload[12:16] == addr_of.get(peer):
                        with elock:
                            verdict = outbound(peer, payload[16:20], (payload[2] << 8) | payload[3],
                                               payload, wall)
                        if verdict == FORWARD:
                            out.append(payload)
                            stats["rx_bytes"] += len(payload)
                        elif verdict == HELD:
                            stats["held"] += 1
                            held = True
                        else:
                            stats["drop_no_contract"] += 1
                    else:
                        stats["drop_spoofed"] += 1
                else:
                    stats["drop_not_ipv4"] += 1
            elif kind == CONTROL:
                stats["control_rx"] += 1
                frames.append((peer, payload))
        if out:
            stats["rx_packets"] += len(out)
            tun.write_batch(out)
        if frames or held:
            # a held packet waits for a proposal: send it now, not at the next tick
            batch, frames = frames, []
            d.loop.call_soon_threadsafe(d._control_in, batch)


def gateway_tun_to_udp(d) -> None:
    sock, responder, tun, stats = d.sock, d.responder, d.tun, d.stats
    peer_of = d.peer_of
    DATA = sess.DATA
    elock, inbound = d.elock, d.engine.inbound
    while d.running:
        packets = tun.read_batch(64, 0.5)
        if not packets:
            continue
        now = time.monotonic()
        wall = time.time()
        for pkt in packets:
            if pkt[0] >> 4 != 4:
                stats["drop_not_ipv4"] += 1
                continue
            peer = peer_of.get(pkt[16:20])
            if peer is None:
                stats["drop_no_peer"] += 1
                continue
            with elock:
                verdict = inbound(peer, pkt[12:16], (pkt[2] << 8) | pkt[3], wall)
            if verdict != FORWARD:
                stats["drop_no_contract_in"] += 1
                continue
            datagram = responder.seal(peer, DATA, pkt, now)
            endpoint = responder.endpoint(peer)
            if datagram is None or endpoint is None:
                stats["drop_no_session"] += 1
                continue
            try:
                sock.sendto(datagram, endpoint)
                stats["tx_bytes"] += len(pkt)
                stats["tx_packets"] += 1
            except OSError:
                stats["send_errors"] += 1


def client_udp_to_tun(d) -> None:
    sock, initiator, tun, stats = d.sock, d.initiator, d.tun, d.stats
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    DATA, CONTROL, DONE = sess.DATA, sess.CONTROL, sess.HANDSHAKE_DONE
    elock, inbound = d.elock, d.engine.inbound
    frames = []
    while d.running:
        if not poller.poll(500):
            continue
        now = time.monotonic()
        wall = time.time()
        out = []
        for datagram, addr in recv_batch(sock, RECV_SIZE):
            if datagram[:1] == b"\x02":  # handshake response: control plane
                with d.lock:
                    res = initiator.receive(datagram, now)
            else:
                res = initiator.receive(datagram, now)
            if res is None:
                continue
            kind, payload = res
            if addr[:2] != d.endpoint:
                # authenticated traffic from a new address: the gateway moved
                d.endpoint = addr[:2]
                d.loop.call_soon_threadsafe(d._spawn, d._gateway_moved())
            if kind == DATA:
                if len(payload) >= 20 and payload[0] >> 4 == 4:
                    with elock:
                        inbound(payload[12:16], (payload[2] << 8) | payload[3], wall)
                out.append(payload)
                stats["rx_bytes"] += len(payload)
            elif kind == DONE:
                d.loop.call_soon_threadsafe(d._spawn, d._handshake_done(payload))
            elif kind == CONTROL:
                stats["control_rx"] += 1
                frames.append(payload)
        if out:
            stats["rx_packets"] += len(out)
            tun.write_batch(out)
        if frames:
            batch, frames = frames, []
            d.loop.call_soon_threadsafe(d._control_in, batch)


def client_tun_to_udp(d) -> None:
    sock, initiator, tun, stats = d.sock, d.initiator, d.tun, d.stats
    DATA = sess.DATA
    elock, outbound = d.elock, d.engine.outbound
    while d.running:
        packets = tun.read_batch(64, 0.5)
        if not packets:
            continue
        wall = time.time()
        with elock:
            for pkt in packets:
                if len(pkt) >= 20 and pkt[0] >> 4 == 4:
                    outbound(pkt[16:20], (pkt[2] << 8) | pkt[3], wall)
        datagrams = initiator.seal_batch(DATA, packets, time.monotonic())
        if len(datagrams) < len(packets):
            stats["drop_no_session"] += len(packets) - len(datagrams)
        endpoint = d.endpoint
        for datagram in datagrams:
            try:
                sock.sendto(datagram, endpoint)
            except OSError:
                stats["send_errors"] += 1
        stats["tx_packets"] += len(datagrams)
        stats["tx_bytes"] += sum(map(len, packets))
