"""The data-path threads taking what their own work brought back, with real
sessions and UDP sockets on loopback and a TUN stand-in, no other thread
running: the gateway's tun-to-udp thread takes the datagrams waiting on its
socket after a batch of its own (holding the receiving thread's wakeups
meanwhile, writing them without holding its own TUN's), the client's
receiving thread sends the reply its TUN write
produced, and the client's sender meters what it sent only after the answer
already waiting was written."""

from __future__ import annotations

import collections
import socket
import threading
import time

from tunnelgate import offload as off
from tunnelgate.daemon import datapath_client, datapath_gateway
from tunnelgate.daemon.client import EVERYWHERE
from tunnelgate.daemon.dataplane import DataPlane
from tunnelgate.daemon.links import Links, SellerLink
from tunnelgate.session import DATA
from tunnelgate.wakeups import IDLE_WAIT_S, WARM_WAIT_S, Wakeups, Warmth

from gateway_plane import OWN, UPSTREAM, FakeTun, gateway_plane, tcp
from session_lab import CL_PUB, GW_PUB, Lab


class QueuedTun(FakeTun):
    """FakeTun whose first read returns `queued` (what the kernel routed to the TUN)."""

    def __init__(self, queued):
        super().__init__()
        self.queued = list(queued)

    def read_frames(self, max_reads, timeout):
        if self.queued:
            out, self.queued = self.queued, []
            return out
        return super().read_frames(max_reads, timeout)

    def wait_readable(self, timeout):
        time.sleep(0.01)
        return False


class RecordedWakeups(Wakeups):
    def __init__(self, fd, log):
        super().__init__(fd)
        self.log = log

    def wait(self, timeout):
        self.log.append(("wait", timeout))
        return super().wait(timeout)

    def hold(self):
        self.log.append("hold")
        super().hold()

    def release(self):
        self.log.append("release")
        super().release()


class LoggedTun(QueuedTun):
    def __init__(self, queued, log):
        super().__init__(queued)
        self.log = log

    def write_frames(self, frames):
        self.log.append("write")
        return super().write_frames(frames)

    def hold_wakeups(self):
        self.log.append("tun hold")

    def release_wakeups(self):
        self.log.append("tun release")


def _run(target, d, until, timeout=5.0):
    worker = threading.Thread(target=target, args=(d,), daemon=True)
    worker.start()
    deadline = time.monotonic() + timeout
    try:
        while not until() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        d.running = False
        worker.join(2)


def test_the_gateway_sender_takes_the_datagrams_waiting_after_its_batch():
    lab = Lab()
    lab.now = time.monotonic()
    lab.connect()
    gw = gateway_plane(lab.gw)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    lab.gw._peers[CL_PUB].endpoint = peer.getsockname()
    down, up = tcp(UPSTREAM, OWN, b"d" * 100), tcp(OWN, UPSTREAM)
    more = tcp(UPSTREAM, OWN, b"m" * 50)          # what the kernel queues once `up` is written
    log = []
    gw.tun = LoggedTun([off.VNET_PLAIN + down], log)
    gw.tun.replies = [off.VNET_PLAIN + more]
    gw.udp_wakeups = RecordedWakeups(gw.sock.fileno(), log)
    # the peer's ACK is already waiting on the gateway's socket
    peer.sendto(lab.client.seal(DATA, up, lab.now), gw.sock.getsockname())
    time.sleep(0.05)
    try:
        _run(datapath_gateway.tun_to_udp, gw, lambda: gw.stats["tx_packets"] >= 2)
        sent = [lab.client.receive(peer.recv(2048), lab.now)[1] for _ in range(2)]
        # what the TUN read went out as, then what writing the ACK produced
        assert sent == [down, more]
    finally:
        peer.close()
        gw.sock.close()
    # no udp-to-tun thread ran: this thread took the datagram, between hold and release,
    # and wrote it without holding the TUN's wakeups (it reads the TUN next itself)
    assert [f[off.VNET_LEN:] for f in gw.tun.frames] == [up]
    assert log[:3] == ["hold", "write", "release"]
    assert gw.stats["rx_packets"] == 1


def test_the_receiver_waits_long_until_traffic_comes_then_wakes_often():
    lab = Lab()
    lab.now = time.monotonic()
    lab.connect()
    gw = gateway_plane(lab.gw)
    log = []
    gw.udp_wakeups = RecordedWakeups(gw.sock.fileno(), log)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    waits = lambda: [t for e, t in (x for x in log if type(x) is tuple)]
    worker = threading.Thread(target=datapath_gateway.udp_to_tun, args=(gw,), daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while not waits() and time.monotonic() < deadline:
            time.sleep(0.01)
        sender.sendto(lab.client.seal(DATA, tcp(OWN, UPSTREAM, b"x"), lab.now), gw.sock.getsockname())
        while len(waits()) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        gw.running = False
        worker.join(2)
        sender.close()
        gw.sock.close()
    assert gw.stats["rx_packets"] == 1
    assert waits()[0] == IDLE_WAIT_S                         # before the datagram: asleep for long
    assert set(waits()[1:]) == {WARM_WAIT_S}                 # after it: waking every WARM_WAIT_S


class Engine:
    """The client engine's data-path calls: everything fits, nothing to say."""
    has_output = False

    def fits(self, addr, total, now):
        return True

    def inbound(self, src, total, now):
        pass

    def outbound_burst(self, dst, total, n, now):
        pass


def _client(lab, tun, engine):
    """A client's data plane, its one link's endpoint a socket standing for the gateway."""
    gateway = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gateway.bind(("127.0.0.1", 0))
    gateway.settimeout(5)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    link = SellerLink(GW_PUB, lab.client, gateway.getsockname())
    link.chunks = True
    links = Links()
    links.add(link, EVERYWHERE)
    stats = collections.Counter()
    plane = DataPlane(sock=sock, tun=tun, receiver=lab.client, links=links, engine=engine,
                      elock=threading.Lock(), saver=None, stats=stats, warmth=Warmth(stats))
    return plane, gateway


def test_the_client_receiver_sends_the_reply_its_tun_write_produced():
    lab = Lab()
    lab.now = time.monotonic()
    lab.connect()
    d, gateway = _client(lab, FakeTun(), Engine())
    sock = d.sock
    down, ack = tcp(UPSTREAM, OWN, b"d" * 100), tcp(OWN, UPSTREAM)
    d.tun.replies = [off.VNET_PLAIN + ack]          # what the kernel queues once `down` is written
    gateway.sendto(lab.gw.seal(CL_PUB, DATA, down, lab.now), sock.getsockname())
    try:
        _run(datapath_client.udp_to_tun, d, lambda: d.stats["tx_packets"])
        # no tun-to-udp thread ran: the receiving thread sealed and sent the reply
        pub, kind, payload = lab.gw.receive(gateway.recv(2048), lab.now, "c1")
        assert payload == ack
    finally:
        gateway.close()
        sock.close()
    assert [f[off.VNET_LEN:] for f in d.tun.frames] == [down]


class LoggedEngine(Engine):
    def __init__(self, log):
        self.log = log

    def outbound_burst(self, dst, total, n, now):
        self.log.append(("meter", dst, total, n))


def test_the_client_sender_meters_after_writing_the_answer_already_waiting():
    # the client only counts what it sends (the gateway enforces), so its
    # metering waits until the datagrams taken after the send are written
    lab = Lab()
    lab.now = time.monotonic()
    lab.connect()
    log = []
    up, down = tcp(OWN, UPSTREAM, b"u" * 60), tcp(UPSTREAM, OWN, b"d" * 100)
    d, gateway = _client(lab, LoggedTun([off.VNET_PLAIN + up], log), LoggedEngine(log))
    # the answer is already waiting when the sender takes the socket after its send
    gateway.sendto(lab.gw.seal(CL_PUB, DATA, down, lab.now), d.sock.getsockname())
    time.sleep(0.05)
    try:
        _run(datapath_client.tun_to_udp, d, lambda: d.stats["tx_packets"])
        pub, kind, payload = lab.gw.receive(gateway.recv(2048), lab.now, "c1")
        assert payload == up
    finally:
        gateway.close()
        d.sock.close()
    assert [f[off.VNET_LEN:] for f in d.tun.frames] == [down]
    assert log == ["write", ("meter", UPSTREAM, len(up), 1)]
    assert (d.stats["tx_packets"], d.stats["tx_bytes"]) == (1, len(up))


def test_the_client_drops_and_counts_what_is_not_an_ip_packet():
    lab = Lab()
    lab.now = time.monotonic()
    lab.connect()
    d, gateway = _client(lab, FakeTun(), Engine())
    handle = datapath_client.udp_handler(d)
    try:
        junk = [lab.gw.seal(CL_PUB, DATA, p, lab.now) for p in (b"", b"\x00not ip", b"\x45short")]
        handle([(dg, len(dg), gateway.getsockname()) for dg in junk])
    finally:
        gateway.close()
        d.sock.close()
    assert d.stats["drop_not_ip"] == 3
    assert d.tun.frames == [] and d.stats["rx_packets"] == 0
