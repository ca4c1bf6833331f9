"""UDP GSO send and UDP GRO receive: the tunnel socket's batch API.

Why: in Python the cost per syscall dominates. One `sendmsg` with
UDP_SEGMENT sends up to 64 equal datagrams, and with UDP_GRO one `recvmsg`
returns several datagrams of one sender back to back. Each datagram still
carries one record, so a lost datagram costs one segment. Both fall back to
one datagram per syscall when the kernel refuses the option.

The only module of the package that touches sockets; the package loads it on
first use (see __init__), so the sans-IO session, which imports chunks.py,
does not import the socket module through it.
"""

from __future__ import annotations

import errno
import select
import socket
import struct

from . import mode

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64                 # UDP_MAX_SEGMENTS on older kernels
GSO_MAX_BYTES = 65000                 # one UDP GSO send is one <64 KB skb


def enable_udp_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        return True
    except OSError:
        return False


_SEG = struct.Struct("=H")
_GRO_CMSG = socket.CMSG_SPACE(4)


class UdpSender:
    """sendto for a list of datagrams to one address, as few UDP GSO sends as
    possible (runs of equal size, a shorter one may end a run). Falls back to
    one sendto per datagram for good if the kernel refuses UDP_SEGMENT."""

    def __init__(self, sock: socket.socket, gso: bool | None = None):
        self.sock = sock
        self.gso = mode() != "0" if gso is None else gso

    def send(self, datagrams: list[bytes], addr) -> int:
        """Returns the number of datagrams that failed to send."""
        sock = self.sock
        if not self.gso or len(datagrams) == 1:
            return self._plain(datagrams, addr)
        errors = 0
        i, n = 0, len(datagrams)
        while i < n:
            size = len(datagrams[i])
            j = i + 1
            limit = min(n, i + GSO_MAX_SEGMENTS, i + GSO_MAX_BYTES // size)
            while j < limit and len(datagrams[j]) == size:
                j += 1
            if j < limit and len(datagrams[j]) < size:
                j += 1                                  # a shorter one may end the run
            if j - i == 1:
                errors += self._plain(datagrams[i:j], addr)
            else:
                try:
                    sock.sendmsg([b"".join(datagrams[i:j])],
                                 [(SOL_UDP, UDP_SEGMENT, _SEG.pack(size))], 0, addr)
                except OSError as e:
                    if e.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                        self.gso = False               # no GSO on this path: never again
                        errors += self._plain(datagrams[i:], addr)
                        return errors
                    errors += j - i
            i = j
        return errors

    def _plain(self, datagrams, addr) -> int:
        errors = 0
        sendto = self.sock.sendto
        for d in datagrams:
            try:
                sendto(d, addr)
            except OSError:
                errors += 1
        return errors


class UdpReceiver:
    """Receive datagrams with UDP GRO: one recvmsg may return several
    datagrams of one sender, concatenated, with their size in a cmsg. The first
    receive blocks (up to the socket's SO_RCVTIMEO), the rest do not.

    Datagrams come back as memoryviews into the received buffer (bytes for a
    lone one), not copies: the caller decrypts them and keeps nothing."""

    def __init__(self, sock: socket.socket, bufsize: int = 65535 + 1024, gro: bool | None = None):
        self.sock = sock
        if gro is None:
            gro = mode() not in ("0", "nogro")
        self.gro = gro and enable_udp_gro(sock)
        self.bufsize = bufsize
        # one per receiver: each data-path thread has its own (poll objects are not shared)
        self._queued = select.poll()
        self._queued.register(sock, select.POLLIN)

    def recv_groups(self, limit: int = 128, block: bool = True) -> list[tuple[bytes, int, object]]:
        """(buffer, segment size, addr) per receive, until about `limit`
        datagrams: the buffer holds datagrams of `segment size` bytes back to
        back, the last possibly shorter (one datagram: its own length).
        session.Responder/Initiator.receive_groups take these as they are.
        `block` False: only what is queued, never waiting. After the first
        receive a zero-timeout poll asks whether more is queued, so a lone
        datagram ends the batch without the EAGAIN receive and its exception
        (tun.Tun.read_frames says why)."""
        out: list[tuple[bytes, int, object]] = []
        append = out.append
        recv = self.sock.recvmsg
        bufsize = self.bufsize
        flags = 0 if block else socket.MSG_DONTWAIT
        count = 0
        while count < limit:
            try:
                data, anc, _, addr = recv(bufsize, _GRO_CMSG, flags)
            except (BlockingIOError, InterruptedError, TimeoutError):
                break
            except OSError:
                break                                  # e.g. ICMP errors queued on the socket
            flags = socket.MSG_DONTWAIT
            n = len(data)
            seg = n
            for level, kind, cdata in anc:
                if level == SOL_UDP and kind == UDP_GRO and len(cdata) >= 4:
                    seg = int.from_bytes(cdata[:4], "little") or n
            seg = seg or 1                             # an empty datagram is one too
            append((data, seg, addr))
            count += -(-n // seg) or 1
            if len(out) == 1 and not self._queued.poll(0):
                break
        return out
