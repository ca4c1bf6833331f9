"""Fuzz the data path's real handlers (tunnelgate.daemon.datapath_gateway,
datapath_client) with mutated peer and TUN input; shared by
tests/fuzz/test_datapath_fuzz.py and scripts/fuzz.

Four handlers, built exactly as the daemons build them, over a DataPlane of
stand-ins for what is not the data path (a TUN that records writes, a socket
that swallows sends, an engine whose verdicts the seed decides, hooks that
only count what they were handed):

- the gateway's datagram handler (datapath_gateway.udp_handler) gets datagrams from a
  client session: authenticated ones whose *plaintext* was mutated before
  sealing (IP/TCP/UDP headers, lengths, chunk records and their type words),
  so they pass the AEAD and reach the packet parsers, and unauthenticated
  ones (random bytes, mutated ciphertext, handshake-shaped junk);
- the client's datagram handler (datapath_client.udp_handler) the same, sealed by the
  gateway's session;
- both TUN handlers (datapath_gateway.tun_handler, datapath_client.tun_handler) get mutated TUN
  reads: virtio-net header (flags, GSO type and size, checksum start/offset)
  and packet.

A case is one input datagram or TUN read; cases go in batches of 1..24 per
handler call, so the coalescing and chunk-run code sees neighbours. An
exception out of a handler is what the data-path thread would die of: it is
recorded (type and where), and that handler is rebuilt. Everything random
comes from one random.Random(seed): a run is reproducible."""

from __future__ import annotations

import collections
import hashlib
import random
import socket
import struct
import threading
import time
import traceback
import types

from tunnelgate import offload as off
from tunnelgate import session as sess
from tunnelgate import wire
from tunnelgate.offload.chunks import CHUNKS_MAX, chunk_kind
from tunnelgate.daemon import datapath_client, datapath_gateway
from tunnelgate.daemon.client import EVERYWHERE
from tunnelgate.daemon.dataplane import DataPlane
from tunnelgate.daemon.links import BuyerLink, Links, SellerLink
from tunnelgate.meter import DROP, FORWARD, HELD
from tunnelgate.wakeups import Warmth

GW_PRIV = hashlib.sha256(b"datapath fuzz gateway").digest()
CL_PRIV = hashlib.sha256(b"datapath fuzz client").digest()
GW_PUB, CL_PUB = sess.public_key(GW_PRIV), sess.public_key(CL_PRIV)
CL_ADDR = ("127.0.0.1", 40000)              # the client's endpoint as the gateway sees it
GW_ADDR = ("127.0.0.1", 51820)
OWN, OWN6 = bytes([100, 64, 0, 2]), bytes.fromhex("fd647467000000000000000000000002")
UPSTREAM, UPSTREAM6 = bytes([198, 18, 2, 2]), bytes.fromhex("fd000000000000000000000000000002")
RECONNECT_S = 30.0                           # well inside Timing's rekey_after_s
TRANSPORT_HDR = struct.Struct("<IIQ")


# --- stand-ins ----------------------------------------------------------------------------

class RecordingTun:
    """A TUN with offloads on: records what the data path writes, and queues
    nothing in reply (the reply paths are exercised through the TUN handlers)."""
    vnet_hdr_len = off.VNET_LEN
    closed = False

    def __init__(self):
        self.written = 0

    def hold_wakeups(self):
        pass

    def release_wakeups(self):
        pass

    def write_frames(self, frames):
        for f in frames:
            # what writev would do with a list of buffers: touch every part
            self.written += len(b"".join(f) if type(f) is list else f)
        return len(frames)

    def read_frames(self, max_reads, timeout):
        return []


class NullSocket:
    """What offload.UdpSender calls on the daemon's socket (and a file descriptor for
    the plane's Wakeups, which the handlers never wait on)."""

    def __init__(self):
        self.sent = 0
        self._fd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def fileno(self):
        return self._fd.fileno()

    def close(self):
        self._fd.close()

    def sendmsg(self, buffers, ancdata, flags, addr):
        n = sum(map(len, buffers))
        self.sent += n
        return n

    def sendto(self, data, addr):
        self.sent += len(data)
        return len(data)


class Verdicts:
    """The engines' data-path calls, verdicts from the harness' random stream:
    mostly FORWARD, sometimes not, so the per-packet slow paths run too."""

    has_output = False
    durable_seq = 0         # no contract ends here: nothing to write through

    def __init__(self, rng: random.Random):
        self.rng = rng

    def _v(self):
        r = self.rng.random()
        return FORWARD if r < 0.8 else HELD if r < 0.9 else DROP

    # the gateway's and the client's signatures differ (the gateway's name the peer)
    def outbound_burst(self, *args):
        return self._v()

    def outbound(self, *args):
        return self._v()

    def inbound_burst(self, *args):
        return self._v()

    def inbound(self, *args):
        return self._v()

    def fits(self, addr, total, now):
        return self.rng.random() < 0.8


class Hooks(collections.Counter):
    """The plane's hooks to the control side: each call counted by name."""

    def hook(self, name):
        def called(*args):
            self[name] += 1
        return called


def gateway_plane(responder, rng) -> tuple[DataPlane, BuyerLink, Hooks]:
    """A gateway's data plane with one peer (CL_PUB at OWN and OWN6)."""
    links = Links()
    link = BuyerLink(CL_PUB, responder, OWN, OWN6)
    link.chunks = True
    links.add(link)
    stats, hooks = collections.Counter(), Hooks()
    plane = DataPlane(sock=NullSocket(), tun=RecordingTun(), receiver=responder, links=links,
                      engine=Verdicts(rng), elock=threading.Lock(),
                      saver=types.SimpleNamespace(written_seq=0), stats=stats, warmth=Warmth(stats),
                      on_control=hooks.hook("control"), on_handshake=hooks.hook("handshake"),
                      persist=hooks.hook("persist"))
    return plane, link, hooks


def client_plane(initiator, rng) -> tuple[DataPlane, SellerLink, Hooks]:
    """A client's data plane with its one gateway (GW_PUB at GW_ADDR)."""
    links = Links()
    link = SellerLink(GW_PUB, initiator, GW_ADDR)
    link.address6 = "fd64:7467::2/64"
    link.chunks = True
    links.add(link, EVERYWHERE)
    stats, hooks = collections.Counter(), Hooks()
    plane = DataPlane(sock=NullSocket(), tun=RecordingTun(), receiver=initiator, links=links,
                      engine=Verdicts(rng), elock=threading.Lock(), saver=None, stats=stats,
                      warmth=Warmth(stats), on_control=hooks.hook("control"),
                      on_output=hooks.hook("output"), on_session=hooks.hook("session"),
                      on_moved=hooks.hook("moved"))
    return plane, link, hooks


# --- packets --------------------------------------------------------------------------------

def ip4(proto: int, src: bytes, dst: bytes, l4: bytes, ihl: int = 5, ident: int = 1) -> bytes:
    opts = bytes((ihl - 5) * 4)
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(l4), ident, 0x4000,
                                64, proto, 0, src, dst) + opts)
    hdr[10:12] = off.ip_header_checksum(hdr[:20]).to_bytes(2, "big") if ihl == 5 else b"\0\0"
    return bytes(hdr) + l4


def ip6(proto: int, src: bytes, dst: bytes, l4: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(l4), proto, 64, src, dst) + l4


def tcp(payload: bytes, seq: int, flags: int = off.ACK, doff: int = 5) -> bytes:
    opts = bytes((doff - 5) * 4) if doff > 5 else b""
    return struct.pack("!HHIIBBHHH", 40000, 443, seq, 7, (doff & 15) << 4, flags, 1000, 0, 0) + opts + payload


def udp(payload: bytes) -> bytes:
    return struct.pack("!HHHH", 40000, 53, 8 + len(payload), 0) + payload


def icmp_echo(payload: bytes) -> bytes:
    return struct.pack("!BBHHH", 8, 0, 0, 1, 1) + payload


class Packets:
    """Well-formed packets and bursts to start mutating from."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def ends(self, v6: bool, up: bool) -> tuple[bytes, bytes]:
        if v6:
            return (OWN6, UPSTREAM6) if up else (UPSTREAM6, OWN6)
        return (OWN, UPSTREAM) if up else (UPSTREAM, OWN)

    def packet(self, up: bool) -> bytes:
        rng = self.rng
        v6 = rng.random() < 0.3
        src, dst = self.ends(v6, up)
        kind = rng.randrange(4)
        payload = rng.randbytes(rng.choice((0, 1, 7, 100, 536, 1200, rng.randrange(1400))))
        if kind == 0:
            l4, proto = tcp(payload, rng.getrandbits(32), rng.choice((off.ACK, off.ACK | off.PSH, off.SYN)),
                            rng.choice((5, 5, 8, 15))), off.TCP
        elif kind == 1:
            l4, proto = udp(payload), off.UDP
        elif kind == 2:
            l4, proto = icmp_echo(payload), 58 if v6 else 1
        else:
            l4, proto = rng.randbytes(rng.randrange(60)), rng.randrange(256)
        if v6:
            return ip6(proto, src, dst, l4)
        return ip4(proto, src, dst, l4, ihl=rng.choice((5, 5, 5, 6, 15)))

    def flow(self, up: bool, v6: bool | None = None) -> list[bytes]:
        """In-order equal-sized segments of one TCP flow: what coalesce merges."""
        rng = self.rng
        if v6 is None:
            v6 = rng.random() < 0.3
        src, dst = self.ends(v6, up)
        mss = rng.choice((536, 1000, 1368, 1448, rng.randrange(1, 1400)))
        n = rng.randint(2, 8)
        seq = rng.getrandbits(32)
        # sometimes a data offset of any value, the sequence numbers consistent
        # with what a parser trusting it sees as payload (the reported attack)
        doff = rng.randrange(16) if rng.random() < 0.2 else 5
        step = mss + 20 - 4 * doff if doff < 5 else mss
        out = []
        for i in range(n):
            size = mss if i < n - 1 else rng.randint(1, mss)
            seg = tcp(rng.randbytes(size), (seq + i * step) & 0xFFFFFFFF,
                      off.ACK | (off.PSH if i == n - 1 and rng.random() < 0.5 else 0), doff)
            out.append(ip6(off.TCP, src, dst, seg) if v6 else ip4(off.TCP, src, dst, seg, ident=i))
        return out

    def tso(self, up: bool) -> tuple[bytes, int]:
        """A TCP TSO burst as a TUN read gives it (one packet, mss) ."""
        rng = self.rng
        v6 = rng.random() < 0.3
        src, dst = self.ends(v6, up)
        mss = rng.choice((1368, 1448, rng.randrange(1, 1500)))
        size = rng.randrange(1, min(64000, mss * 40))
        seg = tcp(rng.randbytes(size), rng.getrandbits(32), off.ACK | off.PSH, rng.choice((5, 8)))
        return (ip6(off.TCP, src, dst, seg) if v6 else ip4(off.TCP, src, dst, seg)), mss


# header bytes worth aiming at: IPv4 ihl, lengths, fragment, protocol; TCP doff
# and flags after a 20-byte IPv4 or 40-byte IPv6 header; IPv6 payload length
# and next header
HOT = (0, 2, 3, 6, 7, 9, 32, 33, 4, 5, 6, 52, 53, 20, 40, 24, 44)


def mutate(rng: random.Random, data: bytes, others: list[bytes] | None = None) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.randrange(10)
        if op <= 2 and b:                           # a header byte, often the interesting ones
            i = rng.choice(HOT) if rng.random() < 0.7 else rng.randrange(min(len(b), 80))
            if i < len(b):
                b[i] = rng.choice((0, 1, 0x0F, 0x10, 0x40, 0x45, 0x4F, 0x50, 0x60, 0xF0, 0xFF,
                                   rng.randrange(256)))
        elif op == 3 and b:                         # a bit anywhere
            i = rng.randrange(len(b) * 8)
            b[i // 8] ^= 1 << (i % 8)
        elif op == 4:                               # truncate
            del b[rng.randrange(len(b) + 1):]
        elif op == 5:                               # extend
            b += rng.randbytes(rng.randint(1, 64))
        elif op == 6 and len(b) > 12:               # a 16-bit field (lengths, ports)
            i = rng.randrange(min(len(b), 60) - 1)
            b[i:i + 2] = rng.choice((0, 1, 20, 40, 0xFFFF, rng.randrange(65536))).to_bytes(2, "big")
        elif op == 7 and others:                    # splice another packet in
            o = rng.choice(others)
            cut = rng.randrange(min(len(b), len(o)) + 1)
            b = b[:cut] + bytearray(o[cut:])
        elif op == 8:                               # a few bytes only
            b = b[:rng.randrange(0, 48)]
        else:                                       # TCP data offset, any value (the reported crash)
            for at in (32, 52):
                if at < len(b) and rng.random() < 0.5:
                    b[at] = rng.randrange(16) << 4 | (b[at] & 15)
    return bytes(b)


# --- sessions -------------------------------------------------------------------------------

def _rand(seed: int, n: int) -> bytes:
    return hashlib.shake_256(b"%d/%d" % (seed, n)).digest(sess.RAND_BYTES)


def connect(seed: int, n: int) -> tuple[sess.Initiator, sess.Responder]:
    """A client and a gateway session with a confirmed key (as after the first keepalive)."""
    now, wall = time.monotonic(), time.time_ns()
    client = sess.Initiator(CL_PRIV, GW_PUB, sess.Timing())
    gw = sess.Responder(GW_PRIV, sess.Timing())
    hs = gw.receive(client.begin(now, wall, _rand(seed, 2 * n), b""), now, CL_ADDR)
    done = client.receive(gw.accept(hs, now, _rand(seed, 2 * n + 1), b""), now)
    assert done is not None and done[0] == sess.HANDSHAKE_DONE, "fuzz sessions failed to handshake"
    for dg in client.poll(now, wall, _rand(seed, 10**9 + n)):
        gw.receive(dg, now, CL_ADDR)
    assert client.seal(sess.KEEPALIVE, b"", now) is not None
    return client, gw


def seal_as(transport, kind: int, payload: bytes) -> bytes:
    """Transport.seal for any type word, chunk words included (an authenticated
    peer can send any index/count)."""
    n = next(transport._counter)
    header = TRANSPORT_HDR.pack(kind, transport.remote_index, n)
    return header + transport._enc.encrypt(struct.pack("<4xQ", n), payload, header)


# --- the harness ----------------------------------------------------------------------------

class Harness:
    def __init__(self, seed: int = 1):
        self.seed = seed
        self.rng = random.Random(seed)
        self.gen = Packets(self.rng)
        self.cases = self.batches = 0
        self.exceptions: collections.Counter = collections.Counter()
        self.first_traceback: dict[str, str] = {}
        self.stats: collections.Counter = collections.Counter()
        self._sessions = 0
        self.g = self.c = None
        self._connect()

    def _connect(self) -> None:
        self._sessions += 1
        self.client, self.gw = connect(self.seed, self._sessions)
        self.connected_at = time.monotonic()
        self._build()

    def _build(self) -> None:
        """Fresh daemons and handlers (after a handler raised, its state is suspect)."""
        if self.g is not None:
            self.stats.update(self.g.stats)
            self.stats.update(self.c.stats)
            self.g.sock.close()
            self.c.sock.close()
        self.g, self.g_link, self.g_hooks = gateway_plane(self.gw, self.rng)
        self.c, self.c_link, self.c_hooks = client_plane(self.client, self.rng)
        self.g_udp = datapath_gateway.udp_handler(self.g)
        self.g_tun = datapath_gateway.tun_handler(self.g)
        self.c_udp = datapath_client.udp_handler(self.c)
        self.c_tun, self.c_settle = datapath_client.tun_handler(self.c)

    # transports sealing toward each handler
    def _up(self):
        return self.client._current

    def _down(self):
        return self.gw._peers[CL_PUB].current

    # --- inputs

    def _sealed(self, transport, up: bool) -> list[bytes]:
        """Authenticated datagrams whose plaintext was mutated before sealing."""
        rng, gen = self.rng, self.gen
        r = rng.random()
        if r < 0.35:                                # one packet, DATA or DATA_PARTIAL
            pkt = gen.packet(up)
            if rng.random() < 0.8:
                pkt = mutate(rng, pkt)
            kind = rng.choice((wire.DATA, wire.DATA_PARTIAL))
            if kind == wire.DATA_PARTIAL and rng.random() < 0.5:
                try:
                    pkt = off.reseed_partial(pkt)
                except Exception:
                    pass
            return [seal_as(transport, kind, pkt)]
        if r < 0.65:                                # a flow's segments: coalesced on receipt
            segs = gen.flow(up)
            if rng.random() < 0.4:
                # one header field changed alike in every segment: they still
                # look like one flow's run (what reached gso_frame with doff < 5)
                at = rng.choice(HOT)
                value = rng.randrange(16) << 4 if at in (32, 52) else rng.randrange(256)
                segs = [s[:at] + bytes([value]) + s[at + 1:] if at < len(s) else s for s in segs]
            else:
                for _ in range(rng.randint(1, 2)):
                    i = rng.randrange(len(segs))
                    segs[i] = mutate(rng, segs[i], segs)
            kind = rng.choice((wire.DATA, wire.DATA_PARTIAL))
            return [seal_as(transport, kind, s) for s in segs]
        if r < 0.95:                                # a burst as chunk records
            pkt, mss = gen.tso(up)
            chunks = off.tcp_chunks(pkt, mss) or [pkt]
            chunks = chunks[:rng.randint(1, min(len(chunks), 24))]
            count = len(chunks)
            words = [chunk_kind(i, count) for i in range(count)]
            for _ in range(rng.randint(1, 2)):
                i = rng.randrange(count)
                if rng.random() < 0.6:
                    chunks[i] = mutate(rng, chunks[i], chunks)
                else:                               # any index/count an authenticated peer may send
                    n = rng.randint(1, CHUNKS_MAX)
                    words[i] = chunk_kind(rng.randrange(n), n)
            return [seal_as(transport, k, c) for k, c in zip(words, chunks)]
        kind = rng.choice((wire.CONTROL, wire.KEEPALIVE))
        return [seal_as(transport, kind, rng.randbytes(rng.randrange(64)))]

    def _junk(self, transport) -> list[bytes]:
        """Unauthenticated: random datagrams, mutated ciphertext, handshake-shaped junk."""
        rng = self.rng
        r = rng.random()
        if r < 0.3:
            return [rng.randbytes(rng.randrange(200))]
        if r < 0.7:
            dg = bytearray(seal_as(transport, wire.DATA, self.gen.packet(True)))
            i = rng.randrange(len(dg))
            dg[i] ^= 1 << rng.randrange(8)
            return [bytes(dg)]
        kind = rng.choice((1, 2, 3, 4, 5, 0xFF))
        return [struct.pack("<I", kind) + rng.randbytes(rng.choice((4, 12, 28, 100, 148, 92, 64)))]

    def _groups(self, datagrams: list[bytes], addr) -> list:
        """As offload.UdpReceiver gives them: sometimes equal-sized datagrams
        back to back in one buffer (UDP GRO), else one per buffer."""
        rng = self.rng
        if len(datagrams) > 1 and datagrams[0] and rng.random() < 0.5:
            size = len(datagrams[0])          # never 0: UdpReceiver makes that 1
            run = 1
            while run < len(datagrams) and len(datagrams[run]) == size:
                run += 1
            if run < len(datagrams) and len(datagrams[run]) < size:
                run += 1
            return ([(memoryview(b"".join(datagrams[:run])), size, addr)]
                    + [(memoryview(d), len(d) or 1, addr) for d in datagrams[run:]])
        return [(memoryview(d), len(d) or 1, addr) for d in datagrams]

    def _tun_frames(self, up: bool) -> list[bytes]:
        """TUN reads: virtio-net header + packet, each possibly mutated."""
        rng, gen = self.rng, self.gen
        out = []
        for _ in range(rng.randint(1, 8)):
            r = rng.random()
            if r < 0.4:
                pkt, mss = gen.tso(up)
                gso = off.GSO_TCPV6 if pkt[0] >> 4 == 6 else off.GSO_TCPV4
                start = 40 if gso == off.GSO_TCPV6 else 20
                frame = off.VNET.pack(off.F_NEEDS_CSUM, gso, 0, mss, start, 16) + pkt
            elif r < 0.7:
                pkt = gen.packet(up)
                if off.partial_ok(pkt):
                    frame = off.partial_vnet(pkt) + off.reseed_partial(pkt)
                else:
                    frame = off.VNET_PLAIN + pkt
            else:
                frame = off.VNET_PLAIN + gen.packet(up)
            if rng.random() < 0.8:
                vnet, pkt = frame[:off.VNET_LEN], frame[off.VNET_LEN:]
                if rng.random() < 0.5:
                    v = bytearray(vnet)
                    i = rng.randrange(off.VNET_LEN)
                    v[i] = rng.choice((0, 1, 3, 4, 5, 0x80, 0x81, 0xFF, rng.randrange(256)))
                    vnet = bytes(v)
                if rng.random() < 0.7:
                    pkt = mutate(rng, pkt)
                frame = vnet + pkt
                if rng.random() < 0.05:
                    frame = frame[:rng.randrange(off.VNET_LEN + 1)]
            out.append(frame)
        return out

    # --- running

    def _call(self, name: str, fn, *args) -> None:
        self.batches += 1
        try:
            fn(*args)
        except Exception as e:
            tb = traceback.extract_tb(e.__traceback__)[-1]
            key = f"{type(e).__name__} at {tb.filename.rsplit('/', 2)[-1]}:{tb.lineno} ({tb.name}) via {name}"
            self.exceptions[key] += 1
            self.first_traceback.setdefault(key, traceback.format_exc())
            self._build()

    def step(self) -> int:
        """One handler call; returns the number of cases it took."""
        rng = self.rng
        if time.monotonic() - self.connected_at > RECONNECT_S:
            self._connect()
        which = rng.randrange(4)
        if which < 2:
            gateway = which == 0
            transport = self._up() if gateway else self._down()
            datagrams = []
            for _ in range(rng.randint(1, 6)):
                datagrams += self._sealed(transport, gateway) if rng.random() < 0.85 else self._junk(transport)
            if gateway:
                self._call("gateway udp", self.g_udp, self._groups(datagrams, CL_ADDR))
            else:
                self._call("client udp", self.c_udp, self._groups(datagrams, GW_ADDR))
            n = len(datagrams)
        else:
            gateway = which == 2
            self.g.links.set_chunks(self.g_link, rng.random() < 0.7)
            self.c.links.set_chunks(self.c_link, rng.random() < 0.7)
            self.c_link.address6 = "fd64:7467::2/64" if rng.random() < 0.8 else None
            frames = self._tun_frames(not gateway)
            if gateway:
                self._call("gateway tun", self.g_tun, frames)
            else:
                self._call("client tun", self._client_tun, frames)
            n = len(frames)
        self.cases += n
        return n

    def _client_tun(self, frames):
        self.c_tun(frames)
        self.c_settle()

    def run(self, cases: int) -> "Harness":
        while self.cases < cases:
            self.step()
        self.stats.update(self.g.stats)
        self.stats.update(self.c.stats)
        self.g.stats.clear()
        self.c.stats.clear()
        return self

    @property
    def exception_count(self) -> int:
        return sum(self.exceptions.values())

    def report(self) -> str:
        lines = [f"{self.cases} cases in {self.batches} handler calls, seed {self.seed}: "
                 f"{self.exception_count} exceptions"]
        for key, n in self.exceptions.most_common():
            lines.append(f"  {n:8d}  {key}")
        return "\n".join(lines)


def main(argv: list[str]) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("cases", nargs="?", type=int, default=1_000_000, help="inputs to try (default 1,000,000)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1): same seed, same run")
    p.add_argument("-v", "--verbose", action="store_true", help="print the first traceback of each kind")
    a = p.parse_args(argv)
    h = Harness(a.seed)
    t0 = time.monotonic()
    step = max(1, a.cases // 20)
    mark = step
    while h.cases < a.cases:
        h.step()
        if h.cases >= mark:
            mark += step
            el = time.monotonic() - t0
            print(f"  {h.cases:>9d} cases  {h.cases / el:8.0f} cases/s  {h.exception_count} exceptions", flush=True)
    h.run(a.cases)
    el = time.monotonic() - t0
    print(h.report())
    print(f"{h.cases} cases in {el:.1f} s: {h.cases / el:.0f} cases/s; exceptions found: {h.exception_count}")
    drops = {k: v for k, v in sorted(h.stats.items()) if k.startswith("drop_")}
    print("handler drop counters:", drops)
    if a.verbose:
        for key, tb in h.first_traceback.items():
            print(f"--- {key}\n{tb}")
    return 1 if h.exception_count else 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))
