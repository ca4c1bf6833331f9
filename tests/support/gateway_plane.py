"""A gateway's data plane for the data-path tests, with no daemon around it: a DataPlane
with a real UDP socket on loopback, one peer (CL_PUB from session_lab, tunnel address OWN)
taking chunk records, a TUN stand-in (FakeTun) and an engine forwarding everything
(ForwardAll), built by gateway_plane(responder); the addresses on either side (OWN, OTHER:
another peer's; UPSTREAM: the internet side) and a TCP packet between two of them (tcp).
Used by tests/unit/daemon: test_datapath_gateway, test_datapath_loops, test_supervise."""

from __future__ import annotations

import collections
import socket
import threading
from types import SimpleNamespace

from tunnelgate import offload as off
from tunnelgate.daemon.dataplane import DataPlane
from tunnelgate.daemon.links import BuyerLink, Links
from tunnelgate.meter import FORWARD
from tunnelgate.wakeups import Warmth

from packets import ipv4_tcp
from session_lab import CL_PUB

OWN, OTHER = bytes([100, 64, 0, 2]), bytes([100, 64, 0, 99])


class FakeTun:
    vnet_hdr_len = off.VNET_LEN
    closed = False

    def __init__(self):
        self.frames = []
        self.replies = []       # what the kernel queues on the TUN once a frame is written

    def hold_wakeups(self):
        pass

    def release_wakeups(self):
        pass

    def write_frames(self, frames):
        self.frames += [b"".join(f) if type(f) is list else f for f in frames]
        return len(frames)

    def read_frames(self, max_reads, timeout):
        if not self.frames:             # nothing written yet: nothing produced
            return []
        out, self.replies = self.replies, []
        return out


class ForwardAll:
    """The engine's data-path calls, every destination covered."""

    durable_seq = 0         # no contract ever ends: nothing to write through

    def outbound_burst(self, peer, dst, total, n, now):
        return FORWARD

    def outbound(self, peer, dst, length, pkt, now):
        return FORWARD

    def inbound_burst(self, peer, src, total, now):
        return FORWARD

    def inbound(self, peer, src, length, now):
        return FORWARD


def no_handshake(hs, now):
    raise AssertionError("no handshake expected")


def gateway_plane(responder) -> DataPlane:
    """A gateway's data plane: one peer (CL_PUB, tunnel address OWN, taking chunk
    records), a UDP socket on loopback, a TUN stand-in, an engine forwarding all."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    links = Links()
    link = BuyerLink(CL_PUB, responder, OWN)
    link.chunks = True
    links.add(link)
    stats = collections.Counter()
    return DataPlane(sock=sock, tun=FakeTun(), receiver=responder, links=links, engine=ForwardAll(),
                     elock=threading.Lock(), saver=SimpleNamespace(written_seq=0), stats=stats,
                     warmth=Warmth(stats), on_handshake=no_handshake)


UPSTREAM = bytes([198, 18, 2, 2])


def tcp(src: bytes, dst: bytes, payload: bytes = b"") -> bytes:
    pkt = bytearray(ipv4_tcp(payload, seq=1, flags=off.ACK))
    pkt[12:16], pkt[16:20] = src, dst
    return bytes(pkt)
