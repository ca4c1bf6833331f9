"""What the forwarding threads run over, declared in one place.

A daemon builds one DataPlane once its socket and TUN exist and hands it to
its two threads (datapath_gateway.py, datapath_client.py, over the loops of
datapath.py); the threads read nothing of the daemon itself. What they do
to the control side goes through the hooks below, each named for the event:
a hook that wakes the control thread is thread-safe (call_soon_threadsafe),
one the thread must wait for (persist) runs on it.

Locks, and who takes them:
- tun_lock: held by whichever thread reads the TUN and sends what it read,
  so reads and sends keep their order (datapath._send_loop, _take_replies);
- udp_lock: held by whichever thread receives from the socket and handles
  what it got (datapath._receive_loop, and the sender after its batch);
- elock: the contract engine's, for every metering call (shared with the
  control thread);
- session_lock: the session's control-plane changes (a handshake response
  completing, begin(), poll()), shared with the control thread.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Callable

from ..wakeups import Wakeups, Warmth
from .handshakes import name_os_thread
from .links import Links
from .supervise import supervise


def _nothing(*args) -> None:
    pass


class DataPlane:
    def __init__(self, *, sock, tun, receiver, links: Links, engine, elock, saver,
                 stats: Counter, warmth: Warmth, session_lock=None,
                 on_control: Callable = _nothing, on_handshake: Callable = _nothing,
                 on_output: Callable = _nothing, on_session: Callable = _nothing,
                 on_moved: Callable = _nothing, persist: Callable = _nothing) -> None:
        self.sock = sock                    # the UDP socket to every counterpart
        self.tun = tun                      # tun.Tun (or a stand-in with its read/write calls)
        # the session that opens what the socket receives: the gateway's Responder (all
        # its peers), the client's one Initiator (its one gateway's SellerLink.session)
        self.receiver = receiver
        self.links = links                  # by counterpart key, and the destination router
        self.engine = engine                # the contract engine's data-path calls, under elock
        self.elock = elock
        self.saver = saver                  # written_seq: what of the engine is on disk
        self.stats = stats                  # the daemon's counters (rx_packets, drop_*, ...)
        self.warmth = warmth                # how long an idle thread sleeps (wakeups.Warmth)
        self.session_lock = session_lock if session_lock is not None else threading.Lock()
        self.tun_lock = threading.Lock()
        self.udp_lock = threading.Lock()
        # the receiving thread's wait, held by a thread taking datagrams itself (wakeups.py)
        self.udp_wakeups = Wakeups(sock.fileno())
        self.running = True
        # --- hooks to the control side
        # control frames received ([(peer, frame)]; [] when only held packets wait for a
        # proposal): thread-safe, wakes the control thread
        self.on_control = on_control
        # the gateway: a handshake initiation (session.Handshake) to answer, and `now`
        self.on_handshake = on_handshake
        # the client: the engine has output (a renewal request): thread-safe
        self.on_output = on_output
        # the client: a handshake with link completed, with the gateway's payload: thread-safe
        self.on_session = on_session
        # the client: link's authenticated datagrams come from a new endpoint: thread-safe
        self.on_moved = on_moved
        # a contract ended while metering: write that through before forwarding more
        # (runs on the data thread, which waits for it)
        self.persist = persist

    def run(self, loop) -> None:
        """A data thread: loop(self) until the plane stops; a failure is logged and the
        loop restarted (supervise), never the end of the daemon.  Named for the kernel too
        (/proc/PID/task/TID/comm), so per-thread CPU tells the threads apart."""
        name_os_thread("tg-" + threading.current_thread().name)
        supervise(lambda: loop(self), lambda: self.running, self.stats,
                  threading.current_thread().name, self.release_wakeups)

    def release_wakeups(self) -> None:
        """A thread that failed mid-batch may have left the other's wakeups held
        (datapath._send_loop, _write_frames): let them go."""
        self.udp_wakeups.release()
        self.tun.release_wakeups()

    def close(self) -> None:
        """After both threads ended."""
        self.udp_wakeups.close()
