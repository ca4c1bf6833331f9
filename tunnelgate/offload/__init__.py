"""Offloads for the data path: fewer syscalls per packet, which in Python is
where the time goes. With them a TUN read returns up to 64 KB of one TCP
flow, one `sendmsg` sends up to 64 equal datagrams, one `recvmsg_into`
returns several, and one TUN write hands the kernel a burst to segment
itself.

Each datagram still carries exactly one IP packet or one chunk of one (a lost
datagram costs one segment). Segments cut from a TSO burst travel as
DATA_PARTIAL: their TCP checksum field holds only the pseudo-header sum,
exactly like a Linux CHECKSUM_PARTIAL packet, so nobody sums payload bytes
in Python on the common path.

One module per concern:
  headers   IP/TCP/virtio-net constants, checksums, DATA_PARTIAL helpers
  tso       TUN reads: a TSO burst -> segments or chunk records
  coalesce  TUN writes: received packets and chunk runs -> GSO frames (Arrivals)
  chunks    the DATA_CHUNK record: type word, payload layout, encode and parse
  udp       UDP GSO send and GRO receive (UdpSender, UdpReceiver)

Their names are re-exported here, so `from tunnelgate import offload as off`
and `off.X` reach all of them (the data path binds what it uses per batch to
locals). The udp names load on first use: the sans-IO session imports
chunks.py, which runs this file, and must not import the socket module.
"""

from __future__ import annotations

import os

from .chunks import (CHUNKS_MAX, DATA_CHUNK, FEATURE_CHUNKS, OPENABLE_KINDS, ChunkRun,
                     chunk_kind, chunk_run, chunks_as_segments, tcp_chunks)
from .coalesce import COALESCE_MAX, CONTINUED, NEW, Arrivals, coalesce, gso_frame
from .headers import (ACK, CSUM_OFFSET, CWR, ECE, F_NEEDS_CSUM, FIN, GSO_ECN, GSO_NONE,
                      GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4, PSH, RST, SYN, TCP, TUN_F_CSUM,
                      TUN_F_TSO4, TUN_F_TSO6, TUNSETOFFLOAD, TUNSETVNETHDRSZ, UDP, URG, VNET,
                      VNET_LEN, VNET_PLAIN, complete_checksum, complete_partial, fold,
                      ip_header_checksum, l4_start, partial_ok, partial_vnet, pseudo6_sum,
                      pseudo_sum, reseed_partial, sum16)
from .tso import frame_payloads, split_frame, tcp4_segments, tcp6_segments


def mode() -> str:
    """TUNNELGATE_OFFLOAD: unset/"1" all offloads, "0" none (one packet per
    syscall everywhere), "nogro" all but UDP GRO, "nochunks" all but chunk
    records (the daemon neither announces nor sends DATA_CHUNK). A diagnostic
    and test switch for the fallback paths, read when a daemon opens its TUN
    and socket or handshakes."""
    return os.environ.get("TUNNELGATE_OFFLOAD", "1")


def chunks_enabled() -> bool:
    return mode() != "nochunks"


_UDP_NAMES = frozenset((
    "GSO_MAX_BYTES", "GSO_MAX_SEGMENTS", "SOL_UDP", "UDP_GRO", "UDP_SEGMENT",
    "UdpReceiver", "UdpSender", "enable_udp_gro",
))


def __getattr__(name: str):
    # PEP 562: `off.UdpSender` or `from tunnelgate.offload import UdpSender`
    # imports udp.py then, not when this package loads (see the docstring).
    if name in _UDP_NAMES:
        from . import udp
        value = getattr(udp, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
