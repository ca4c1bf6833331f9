"""TUN device (python-pytun) with a batch-shaped API.

    tun = Tun("tg0", mtu=1420)          # IFF_TUN | IFF_NO_PI, non-blocking fd
    packets = tun.read_batch(64, 0.5)   # [] on timeout
    tun.write_batch(packets)            # bad packets are dropped and counted

The device is not persistent: it disappears when the fd is closed (or the
process dies), taking its addresses and routes with it. Addresses, routes and
the link state are set by ``tunnelgate.net.setup``, not here (the MTU is set
here because it bounds the read buffer).

Offloads (``offload=True``; the default unless TUNNELGATE_OFFLOAD=0): the device is opened with
``IFF_VNET_HDR`` and ``TUNSETOFFLOAD(TUN_F_CSUM|TUN_F_TSO4|TUN_F_TSO6)``, so every read and
write carries a 10-byte virtio-net header and a read may return up to 64 KB of
one TCP flow (``tun.vnet_hdr_len == 10``). If the kernel refuses, the device
works without (``vnet_hdr_len == 0``). The data path uses the raw frames
(``read_frames``/``write_frames``, see tunnelgate.offload); ``read_batch`` and
``write_batch`` keep handing out and taking plain, complete IP packets either
way (segmenting and finishing checksums in Python: correct, not fast).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct

import pytun

from . import offload as off
from .wakeups import Wakeups

__all__ = ["Tun", "TunError"]

TUN_DEVICE = "/dev/net/tun"
IFNAMSIZ = 16
# With IFF_VNET_HDR + TSO a read returns up to 65535 bytes + the virtio-net header.
READ_SIZE = 65536 + 64
# how long write_batch waits for the queue to drain after EAGAIN (ms)
WRITE_WAIT_MS = 20

_POLL_DEAD = select.POLLERR | select.POLLHUP | select.POLLNVAL
IFF_VNET_HDR = getattr(pytun, "IFF_VNET_HDR", 0x4000)


class TunError(Exception):
    """The TUN device could not be opened or configured; the message says what to do."""


def _explain_open_error(name: str, exc: BaseException) -> TunError:
    text = str(exc)
    low = text.lower()
    if not os.path.exists(TUN_DEVICE):
        return TunError(f"cannot open TUN {name!r}: {TUN_DEVICE} missing: load the tun module "
                        f"(modprobe tun) or, in a container, pass the device in (--device /dev/net/tun)")
    if "permitted" in low or "permission" in low or "eperm" in low or "eacces" in low:
        return TunError(f"cannot open TUN {name!r}: {text}: needs root or CAP_NET_ADMIN")
    if "busy" in low:
        return TunError(f"cannot open TUN {name!r}: {text}: the device is in use "
                        f"(is another tunnelgate running with tun = {name!r}?)")
    if "invalid" in low:
        return TunError(f"cannot open TUN {name!r}: {text}: is {name!r} an existing non-TUN "
                        f"interface? pick another tun name")
    return TunError(f"cannot open TUN {name!r}: {text}")


class Tun:
    """A non-persistent TUN interface read and written in batches.

    Thread model: one thread may call read_batch while another calls
    write_batch (each has its own poll object). ``stats`` holds plain
    counters updated once per batch:

    read_packets, read_bytes, write_packets, write_bytes,
    write_dropped (refused by the kernel or queue full), write_eagain
    """

    def __init__(self, name: str, mtu: int = 1420, offload: bool | None = None):
        if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or name.strip() != name:
            raise TunError(f"bad TUN name {name!r}: 1-15 characters, no '/' or spaces")
        if not 68 <= mtu <= 65535:
            raise TunError(f"bad MTU {mtu} for TUN {name!r}: must be 68..65535")
        flags = pytun.IFF_TUN | pytun.IFF_NO_PI
        if offload is None:
            offload = off.mode() != "0"
        if offload:
            flags |= IFF_VNET_HDR
        try:
            self._dev = pytun.TunTapDevice(name=name, flags=flags)
        except (pytun.Error, OSError) as exc:
            raise _explain_open_error(name, exc) from exc
        self.name: str = self._dev.name
        self.mtu = mtu
        self._fd = self._dev.fileno()
        self.vnet_hdr_len = 0
        if offload:
            try:
                fcntl.ioctl(self._fd, off.TUNSETVNETHDRSZ, struct.pack("i", off.VNET_LEN))
                fcntl.ioctl(self._fd, off.TUNSETOFFLOAD, off.TUN_F_CSUM | off.TUN_F_TSO4 | off.TUN_F_TSO6)
                self.vnet_hdr_len = off.VNET_LEN
            except OSError:
                # IFF_VNET_HDR is set, so frames still carry the header (all
                # zero from the kernel without offloads); only TSO is missing.
                self.vnet_hdr_len = off.VNET_LEN
        try:
            os.set_blocking(self._fd, False)
            self._dev.mtu = mtu
        except (pytun.Error, OSError) as exc:
            self._dev.close()
            raise TunError(f"cannot configure TUN {self.name!r} (MTU {mtu}): {exc}") from exc
        self._rpoll = select.poll()
        self._rpoll.register(self._fd, select.POLLIN)
        # a poll object is not to be shared by threads: wait_readable() has its own
        self._wakeups = Wakeups(self._fd)
        self._wpoll = select.poll()
        self._wpoll.register(self._fd, select.POLLOUT)
        self.closed = False
        self.stats: dict[str, int] = {
            "read_packets": 0, "read_bytes": 0,
            "write_packets": 0, "write_bytes": 0,
            "write_dropped": 0, "write_eagain": 0,
        }

    def fileno(self) -> int:
        return self._fd

    def wait_readable(self, timeout: float) -> bool:
        """Block up to ``timeout`` s until a read would return data (False on
        timeout or once closed), without reading. Safe while another thread
        calls read_frames(..., 0), which never waits (its zero-timeout poll
        uses a poll object of its own)."""
        if self.closed:
            return False
        return self._wakeups.wait(timeout) and not self.closed

    def hold_wakeups(self) -> None:
        """Until release_wakeups(), what arrives does not wake wait_readable()
        (tunnelgate.wakeups): for a thread about to write packets whose replies
        the kernel queues on this TUN during the write, and which it reads and
        sends itself right after (daemon/datapath.py)."""
        self._wakeups.hold()

    def release_wakeups(self) -> None:
        """End hold_wakeups(): whatever is still queued wakes the waiter now."""
        self._wakeups.release()

    def __repr__(self) -> str:
        return f"<Tun {self.name} fd={self._fd}{' closed' if self.closed else ''}>"

    # -- reading ---------------------------------------------------------
    def read_batch(self, max_packets: int = 64, timeout: float = 0.5) -> list[bytes]:
        """Wait up to ``timeout`` s for a packet, then drain up to ``max_packets``
        reads without blocking. Plain, complete IP packets (TSO bursts are
        segmented, partial checksums finished). [] on timeout or once closed."""
        frames = self.read_frames(max_packets, timeout)
        if not self.vnet_hdr_len:
            return frames
        out: list[bytes] = []
        for frame in frames:
            pkts, partial = off.split_frame(frame)
            if partial:
                pkts = [off.complete_partial(p) for p in pkts]
            out.extend(pkts)
        return out

    def read_frames(self, max_reads: int = 64, timeout: float = 0.5) -> list[bytes]:
        """Raw reads: with ``vnet_hdr_len`` each starts with a virtio-net header.

        Reads first and polls only when nothing is queued, so a busy data path
        costs one syscall per read. After the first frame a zero-timeout poll
        asks whether another is queued: a lone packet (an idle ping) then ends
        the batch without the EAGAIN read, whose exception costs ≈ 40 µs more
        than the poll on a CPU woken from idle (≈ 30 µs per TUN read of a ping).
        ``timeout`` <= 0: only what is queued, never waiting (so another thread
        may wait in wait_readable meanwhile)."""
        if self.closed:
            return []
        out: list[bytes] = []
        append = out.append
        read = os.read
        fd = self._fd
        nbytes = 0
        polled = False
        while len(out) < max_reads:
            try:
                pkt = read(fd, READ_SIZE)
            except BlockingIOError:
                if out or polled or timeout <= 0:
                    break
                polled = True
                try:
                    events = self._rpoll.poll(max(0, int(timeout * 1000)))
                except (OSError, ValueError):
                    break
                if not events or self.closed:
                    break
                if events[0][1] & _POLL_DEAD and not events[0][1] & select.POLLIN:
                    break
                continue
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.EBADFD, errno.EIO):
                    break           # closed under us, or the device went away
                raise
            if not pkt:
                break
            nbytes += len(pkt)
            append(pkt)
            if len(out) == 1 and not self._rpoll.poll(0):
                break
        if out:
            st = self.stats
            st["read_packets"] += len(out)
            st["read_bytes"] += nbytes
        return out

    # -- writing ---------------------------------------------------------
    def write_batch(self, packets) -> int:
        """Write each (plain, complete) IP packet; return how many the kernel
        accepted. See write_frames."""
        if self.vnet_hdr_len and not self.closed:
            plain = off.VNET_PLAIN
            packets = [plain + p for p in packets]
        return self.write_frames(packets)

    def write_frames(self, packets) -> int:
        """Write each frame (with ``vnet_hdr_len``: virtio-net header + packet);
        return how many the kernel accepted. A frame may be a list of buffers
        (written with one writev: offload.ChunkRun.frame_parts).

        A packet the kernel refuses (EINVAL for a malformed header, EIO when
        the link is down, ...) is dropped and counted in stats['write_dropped'];
        on EAGAIN wait up to WRITE_WAIT_MS for POLLOUT and retry once.
        Never raises for a single bad packet."""
        if self.closed:
            n = len(packets) if hasattr(packets, "__len__") else sum(1 for _ in packets)
            self.stats["write_dropped"] += n
            return 0
        write, writev = os.write, os.writev
        fd = self._fd
        ok = nbytes = dropped = eagain = 0
        for pkt in packets:
            w = writev if type(pkt) is list else write
            try:
                n = w(fd, pkt)
            except BlockingIOError:
                eagain += 1
                try:
                    self._wpoll.poll(WRITE_WAIT_MS)
                    n = w(fd, pkt)
                except OSError:
                    dropped += 1
                    continue
            except OSError:
                dropped += 1
                continue
            ok += 1
            nbytes += n
        st = self.stats
        st["write_packets"] += ok
        st["write_bytes"] += nbytes
        if dropped:
            st["write_dropped"] += dropped
        if eagain:
            st["write_eagain"] += eagain
        return ok

    # -- lifecycle -------------------------------------------------------
    def close(self) -> None:
        """Close the fd; the kernel deletes the interface. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for p in (self._rpoll, self._wpoll):
            try:
                p.unregister(self._fd)
            except (KeyError, ValueError, OSError):
                pass
        self._wakeups.close()
        try:
            self._dev.close()
        except (pytun.Error, OSError):
            pass

    def __enter__(self) -> "Tun":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
