"""The gateway's receive loop (datapath_gateway.udp_to_tun) over a DataPlane with a real
UDP socket on loopback, real sessions and a TUN stand-in: an authenticated peer's chunk
records are forwarded only from the address the gateway gave it, each spoofed chunk is
counted, and a reply the TUN write produced goes back from the same thread. Also the
peers' links the gateway keeps from their addresses."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from types import SimpleNamespace

from tunnelgate import offload as off
from tunnelgate.offload.chunks import DATA_CHUNK
from tunnelgate.daemon import datapath_gateway
from tunnelgate.daemon.gateway import GatewayDaemon
from tunnelgate.daemon.links import Links
from tunnelgate.meter import FORWARD

from gateway_plane import OTHER, OWN, ForwardAll, gateway_plane
from packets import burst, ipv4_tcp
from session_lab import Lab


def sealed_burst(lab, src: bytes, seq: int) -> list[bytes]:
    frame, _ = burst(1368 * 5, 1368, seq=seq)
    pkt = bytearray(frame[off.VNET_LEN:])
    pkt[12:16] = src                      # the burst's source (its IP checksum is redone per chunk)
    chunks, kind = off.frame_payloads(frame[:off.VNET_LEN] + bytes(pkt), True)
    assert kind == DATA_CHUNK
    return lab.client.seal_batch(kind, chunks, lab.now)


def test_chunks_from_another_source_are_dropped_and_counted_own_ones_forwarded_reply_sent():
    lab = Lab()
    lab.now = time.monotonic()          # the session's clock is the one the data path reads
    lab.connect()
    gw = gateway_plane(lab.gw)
    spoofed, own = sealed_burst(lab, OTHER, 1000), sealed_burst(lab, OWN, 9000)
    ack = bytearray(ipv4_tcp(b"", seq=1, flags=off.ACK))
    ack[12:16], ack[16:20] = ack[16:20], OWN                     # upstream -> the peer
    gw.tun.replies = [off.VNET_PLAIN + bytes(ack)]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # the peer, roamed to here
    sender.settimeout(5)
    worker = threading.Thread(target=datapath_gateway.udp_to_tun, args=(gw,), daemon=True)
    worker.start()
    try:
        for dg in spoofed + own:
            sender.sendto(dg, gw.sock.getsockname())
        deadline = time.monotonic() + 5
        while gw.stats["rx_packets"] < len(own) and time.monotonic() < deadline:
            time.sleep(0.01)
        # no tun-to-udp thread runs here: the receiving thread sent the queued reply
        kind, payload = lab.client.receive(sender.recv(2048), lab.now)
        assert payload == bytes(ack)
    finally:
        gw.running = False
        worker.join(2)
        sender.close()
        gw.sock.close()
    assert gw.stats["drop_spoofed"] == len(spoofed)
    assert gw.stats["rx_packets"] == len(own)
    assert len(gw.tun.frames) == 1                       # the own burst: one GSO frame
    frame = gw.tun.frames[0]
    assert frame[off.VNET_LEN + 12:off.VNET_LEN + 16] == OWN
    assert off.VNET.unpack_from(frame)[1] == off.GSO_TCPV4


def test_a_peer_address_stored_under_another_prefix_gets_no_ipv6_twin():
    d = object.__new__(GatewayDaemon)
    d.cfg = SimpleNamespace(address=ipaddress.IPv4Interface("100.64.0.1/24"),
                            address6=ipaddress.IPv6Interface("fd64:7467::1/64"))
    d.links, d.responder = Links(), None
    d._remember(b"a" * 32, "100.64.0.7")
    d._remember(b"b" * 32, "100.64.9.7")          # from an earlier [network] address = 100.64.9.1/24
    a, b = d.links.get(b"a" * 32), d.links.get(b"b" * 32)
    assert a.address6 == ipaddress.IPv6Address("fd64:7467::7").packed
    assert (b.address, b.address6) == (bytes([100, 64, 9, 7]), None)
    # the reverse map: a packet from the TUN finds the peer by its destination
    assert d.links.router.lookup(a.address6) is a and d.links.router.lookup(b.address) is b
    assert d.links.router.lookup(bytes([100, 64, 0, 9])) is None


def test_a_peer_given_another_address_is_found_by_the_new_one_only():
    d = object.__new__(GatewayDaemon)
    d.cfg = SimpleNamespace(address=ipaddress.IPv4Interface("100.64.0.1/24"), address6=None)
    d.links, d.responder = Links(), None
    old = d._remember(b"a" * 32, "100.64.0.7")
    d.links.set_chunks(old, True)
    new = d._remember(b"a" * 32, "100.64.0.8")
    assert d.links.router.lookup(bytes([100, 64, 0, 7])) is None
    assert d.links.router.lookup(bytes([100, 64, 0, 8])) is new and new.chunks


class FirstBurstMisses(ForwardAll):
    """A contract that does not cover the first burst whole (its edge, or a grace slice used
    up: the engine then decides packet by packet) and covers the rest."""

    def __init__(self):
        self.bursts = 0

    def outbound_burst(self, peer, dst, total, n, now):
        self.bursts += 1
        return FORWARD if self.bursts > 1 else 2        # meter.DROP: decide per packet


def tcp_seq(frame: bytes) -> int:
    ip = frame[off.VNET_LEN:]
    return int.from_bytes(ip[24:28], "big")


def test_a_burst_decided_packet_by_packet_keeps_its_place_in_the_batch():
    # Written after the rest of the batch, such packets reached the upstream host out of
    # order: on two hops, where the relay's upstream contract crosses grace slices, TCP saw
    # 836 reorderings in 3 s and retransmitted for them.
    lab = Lab()
    lab.now = time.monotonic()
    lab.connect()
    gw = gateway_plane(lab.gw)
    gw.engine = FirstBurstMisses()
    first, second = sealed_burst(lab, OWN, 1000), sealed_burst(lab, OWN, 1000 + 1368 * 5)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for dg in first + second:                # queued before the thread starts: one batch
        sender.sendto(dg, gw.sock.getsockname())
    worker = threading.Thread(target=datapath_gateway.udp_to_tun, args=(gw,), daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while gw.stats["rx_packets"] < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        gw.running = False
        worker.join(2)
        sender.close()
        gw.sock.close()
    assert gw.stats["rx_packets"] == 10 and gw.engine.bursts == 2
    seqs = [tcp_seq(f) for f in gw.tun.frames]
    # the first burst's five segments one by one, then the second as one GSO frame
    assert seqs == [1000 + 1368 * i for i in range(5)] + [1000 + 1368 * 5], seqs
