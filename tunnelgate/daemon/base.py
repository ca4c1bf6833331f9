"""What both daemons share: state_dir, pidfile, logging, the asyncio loop that
runs timers and the control socket, and the two data-path threads' lifecycle.

The data path runs in plain threads (one per direction) because blocking
reads in threads beat an event loop for throughput in Python; everything else
(timers, control socket, database) runs in the asyncio thread.

The asyncio thread sleeps until the earliest deadline its state knows of (the
sessions', the control channels', the contract engine's timers and the
saver's next save: `engine_deadline`), and is woken early by `poke()`: when a
data thread hands it work (control frames, a held packet, a renewal due, a
contract used up or ended) and whenever its own handling may have made a
deadline earlier. What traffic changes in the engines (a client's renewal by
the rate a contract is used at: at 700 Mbit/s a first contract lasts 0.1 s)
the data thread sees as it meters, and it wakes this thread (plane.on_output,
on_control, persist). It sleeps at most MAX_SLEEP_S: the bound stands for
the timers a data thread files without telling (a seller's proposal timeout,
a contract's expiry when the data path started it: found within MAX_SLEEP_S)
and the session timers a data thread starts (the gateway's ack of a peer's
datagram, due ack_after_s = 1 s later, late by at most MAX_SLEEP_S: still well
before the client's dead_after_s = 3 s).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..net import setup as netsetup
from ..paths import running_pid, state_paths
from ..tun import Tun
from ..wakeups import Warmth
from . import privilege
from .control import ControlServer
from .dataplane import DataPlane
from .market import SAVE_EVERY_S, Channels, EventLog, Saver, SideTap
from .store import Store

log = logging.getLogger("tunnelgate")

SOCKET_BUFFER = 4 * 1024 * 1024
RECV_TIMEOUT_S = 0.5
MAX_SLEEP_S = 0.5       # the control thread wakes at least this often (see above)
MIN_SLEEP_S = 0.002     # ... and after a tick sleeps at least this long, if not poked
# The engine's timers are run on a grid of this step (wall clock): a seller with 100 peers
# has 100 USAGE timers a second, spread over it; one wake-up per step takes all that fell in
# it, so at most 1 / ENGINE_GRID_S wake-ups a second for the engine, none late by more.
ENGINE_GRID_S = 0.1


class DaemonError(Exception):
    pass


def setup_logging(logfile: Path, verbose: bool) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    fh = logging.FileHandler(logfile)
    fh.setFormatter(fmt)
    root.addHandler(fh)
    if stderr_is_file():
        # backgrounded (cli._background: stderr is state_dir/daemon.stderr): the log file
        # already has every line, and a copy would double the disk a noisy peer costs
        return
    sh = logging.StreamHandler()
    # journald adds its own timestamps
    sh.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(sh)


def stderr_is_file() -> bool:
    try:
        return stat.S_ISREG(os.fstat(sys.stderr.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


def features(handshake_payload: bytes) -> frozenset[str]:
    """The optional data-path features a peer announced in its handshake
    payload (JSON {"features": [...]}); none for an empty or unreadable one,
    so a peer of an older version simply gets the plain format."""
    try:
        got = json.loads(handshake_payload).get("features", [])
    except (ValueError, AttributeError, UnicodeDecodeError):
        return frozenset()
    return frozenset(f for f in got if isinstance(f, str)) if isinstance(got, list) else frozenset()


def udp_socket(bind: tuple[str, int]) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        s.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        try:  # SO_*BUFFORCE lifts net.core.*mem_max for root
            s.setsockopt(socket.SOL_SOCKET, {socket.SO_SNDBUF: 32, socket.SO_RCVBUF: 33}[opt], SOCKET_BUFFER)
        except OSError:
            pass
    try:
        s.bind(bind)
    except OSError as e:
        s.close()
        raise DaemonError(f"cannot bind UDP {bind[0]}:{bind[1]}: {e.strerror}; "
                          "is another daemon using it, or is the address not configured here?") from None
    # Blocking sends give the data path back-pressure instead of drops.
    # Receives block too, but at most RECV_TIMEOUT_S (so a data-path thread
    # sees `running` go false): no poll() per batch, the first recv waits.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                 struct.pack("@ll", 0, int(RECV_TIMEOUT_S * 1_000_000)))
    return s


class Daemon:
    role = "daemon"

    def __init__(self, cfg, private_key: bytes, verbose: bool = False):
        self.cfg = cfg
        self.private_key = private_key
        self.paths = state_paths(cfg.node.state_dir)
        self.verbose = verbose
        self.stats: Counter[str] = Counter()
        self.running = True
        self.ready = False
        self.started_at = time.time()
        self.lock = threading.Lock()  # serialises session control-plane calls across threads
        self.threads: list[threading.Thread] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._woken: asyncio.Event | None = None     # poke(): the control thread looks again
        self.store: Store | None = None
        self.warmth = Warmth(self.stats, cfg.session.keep_warm_s)
        # built by setup(), in this order: the contract side, the TUN and the socket, then
        # the data plane over them (dataplane.DataPlane), which the data threads get
        self.engine = None
        self.elock = threading.Lock()   # the engine's: the data threads meter under it
        self.events: EventLog | None = None
        self.channels: Channels | None = None
        self.saver: Saver | None = None
        self.tun: Tun | None = None
        self.sock: socket.socket | None = None
        self.plane: DataPlane | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def prepare_state_dir(self) -> None:
        d = self.cfg.node.state_dir
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        pid = running_pid(self.paths["pid"])
        if pid and pid != os.getpid():
            raise DaemonError(f"a tunnelgate daemon (pid {pid}) already runs with state_dir {d}; "
                              f"stop it with `tunnelgate down -c {self.cfg.path}`")
        self.paths["pid"].write_text(f"{os.getpid()}\n")

    def run(self) -> int:
        try:
            return asyncio.run(self._main())
        finally:
            try:
                if running_pid(self.paths["pid"]) == os.getpid():
                    self.paths["pid"].unlink()
            except FileNotFoundError:
                pass

    async def _main(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._woken = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop)
        control = ControlServer(self.paths["control"], self.handlers())
        # a dead instance may have left routes, rules or an nft table behind
        await self.net(netsetup.teardown, self.paths["net"])
        self.store = Store(self.paths["db"])
        try:
            await self.setup()
            await control.start()
            metrics = None
            if self.cfg.metrics_listen:
                from .metrics import start as start_metrics
                try:
                    metrics, _ = start_metrics(self, self.cfg.metrics_listen)
                except OSError as e:
                    raise DaemonError(f"cannot serve metrics on {self.cfg.metrics_listen[0]}:"
                                      f"{self.cfg.metrics_listen[1]}: {e.strerror}; change [metrics] listen") from None
            self._drop_privileges()
            for name, loop in self.workers():
                t = threading.Thread(target=self.plane.run, args=(loop,), name=name, daemon=True)
                t.start()
                self.threads.append(t)
            log.info("%s started (pid %d)", self.role, os.getpid())
            await self._timers()
            log.info("%s stopping", self.role)
            if metrics is not None:
                metrics.shutdown()
            return 0
        finally:
            self.running = False
            if self.plane is not None:
                self.plane.running = False
            for t in self.threads:
                t.join(timeout=2)
            if self.plane is not None:
                self.plane.close()
            await control.close()
            await self.stopping()
            self.shutdown()
            await self.net(netsetup.teardown, self.paths["net"])
            self.store.close()
            log.info("%s stopped", self.role)

    def _drop_privileges(self) -> None:
        """The TUN, routes and nft table are set up: become [daemon] user (privilege.py).
        Only this thread keeps CAP_NET_ADMIN, so later network changes (asyncio.to_thread)
        get a fresh executor whose threads inherit it."""
        try:
            privilege.drop(self.cfg.user, self.cfg.node.state_dir)
        except (privilege.PrivilegeError, OSError) as e:
            raise DaemonError(f"cannot drop privileges: {e}") from None
        self.loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="net"))

    async def _timers(self) -> None:
        """Until stopped: tick() when the earliest deadline is due (next_deadline(), at
        most MAX_SLEEP_S after the last tick), else sleep until then or a poke()."""
        woken, stop = self._woken, self._stop
        last = float("-inf")
        while not stop.is_set():
            now = time.monotonic()
            due = last + MAX_SLEEP_S
            deadline = self.next_deadline()
            if deadline is not None and deadline < due:
                due = deadline
            if now >= due:
                self.tick(now)
                last = now
                wait = MIN_SLEEP_S
            else:
                wait = due - now
            woken.clear()
            try:
                await asyncio.wait_for(woken.wait(), wait)
            except asyncio.TimeoutError:
                pass

    def poke(self) -> None:
        """The control thread looks at its deadlines again (a new one may be earlier).
        From the asyncio thread; a data thread posts it with call_soon_threadsafe."""
        if self._woken is not None:
            self._woken.set()

    @staticmethod
    async def net(fn, *args):
        # pyroute2's synchronous API runs its own event loop, which cannot nest inside ours
        return await asyncio.to_thread(fn, *args)

    def stop(self) -> None:
        if self._stop:
            self._stop.set()
            self._woken.set()

    # --- control socket -------------------------------------------------------------

    def handlers(self) -> dict:
        return {"status": self.cmd_status, "stop": self.cmd_stop, "events": self.cmd_events,
                "peers": self.cmd_peers, "contracts": self.cmd_contracts}

    def cmd_contracts(self, req: dict) -> list[dict]:
        with self.elock:        # only the copy: the data path meters under this lock
            cs = self.engine.contract_list(history=bool(req.get("all")))
        now = time.time()
        return [c.view(now) for c in cs]

    def cmd_peers(self, req: dict) -> list[dict]:
        """Gateway: its clients with address, endpoint and standing (grace, paid contracts,
        drops, no-deal back-offs). Client: its gateway."""
        st = self.status()
        if self.role == "client":
            return [{"endpoint": st["gateway"], "public_key": st["gateway_public_key"],
                     "connected": st["connected"], "address": st["address"]}]
        standing = st.get("market", {}).get("peers", {})
        return [{**p, **standing.get(p["public_key"], {})} for p in st.get("peers", [])]

    def event_sources(self) -> list[tuple[str | None, EventLog]]:
        """The event logs `events` shows, each with the side it stands for (None: the
        daemon's one log; a relay has two, relay.py)."""
        return [(None, self.events)]

    def cmd_events(self, req: dict):
        """Recent events newer than `since`, in time order (marked with their ``side`` where
        the daemon has several logs); with `follow`, a stream of them as they happen."""
        since = req.get("since", 0)
        sources = self.event_sources()
        backlog = sorted((e if side is None else {**e, "side": side}
                          for side, log_ in sources for e in log_.recent if e["ts"] > since),
                         key=lambda e: e["ts"])
        if not req.get("follow"):
            return backlog
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
        taps = [(log_, queue if side is None else SideTap(queue, side)) for side, log_ in sources]

        async def follow():
            for log_, tap in taps:
                log_.subscribers.add(tap)
            try:
                for e in backlog:
                    yield e
                while self.running:
                    yield await queue.get()
            finally:
                for log_, tap in taps:
                    log_.subscribers.discard(tap)
        return follow()

    def cmd_stop(self, req: dict) -> dict:
        self.loop.call_soon(self.stop)
        return {"stopping": True, "pid": os.getpid()}

    def cmd_status(self, req: dict) -> dict:
        return {
            "role": self.role,
            "pid": os.getpid(),
            "ready": self.ready,
            "uptime_s": round(time.time() - self.started_at, 1),
            "config": str(self.cfg.path),
            "tun": self.cfg.tun,
            "privileges": privilege.current(),      # user, uid, capabilities kept
            "stats": dict(self.stats),
            **self.status(),
        }

    # --- for subclasses ----------------------------------------------------------------

    async def setup(self) -> None:
        raise NotImplementedError

    def workers(self) -> list[tuple[str, object]]:
        """(thread name, loop) per data thread; each loop is called with the DataPlane."""
        raise NotImplementedError

    def tick(self, now: float) -> None:
        pass

    def next_deadline(self) -> float | None:
        """When tick() has something to do next (monotonic), as far as known."""
        return None

    def engine_deadline(self, now: float) -> float:
        """The contract engine's next timer or the saver's next save, whichever is first,
        as a monotonic time (both keep wall-clock time: contracts outlive a restart)."""
        with self.elock:        # the data threads file timers under it
            d = self.engine.next_deadline()
        wall = time.time()
        due = self.saver.last + SAVE_EVERY_S
        if d is not None and d < due:
            due = d
        due = math.ceil(due / ENGINE_GRID_S) * ENGINE_GRID_S     # late by less than a step
        return now + (due - wall)

    def status(self) -> dict:
        return {}

    async def stopping(self) -> None:
        """What must be undone on the loop before shutdown (an mDNS announcer's goodbye)."""

    def shutdown(self) -> None:
        pass

