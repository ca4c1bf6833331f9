"""What both daemons share: state_dir, pidfile, logging, the asyncio loop that
runs timers and the control socket, and the two data-path threads' lifecycle.

The data path runs in plain threads (one per direction) because blocking
reads in threads beat an event loop for throughput in Python; everything else
(timers, control socket, database) runs in the asyncio thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
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
from ..wakeups import Wakeups, Warmth
from . import privilege
from .control import ControlServer
from .store import Store
from .supervise import supervise

log = logging.getLogger("tunnelgate")

SOCKET_BUFFER = 4 * 1024 * 1024
RECV_TIMEOUT_S = 0.5
TICK_S = 0.05


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
        self._stop = None
        self.store: Store | None = None
        # held by whichever data-path thread receives from the socket (datapath._receive_loop)
        self.udp_lock = threading.Lock()
        self.udp_wakeups: Wakeups | None = None
        self.warmth = Warmth(self.stats, cfg.session.keep_warm_s)

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
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._stop.set)
        control = ControlServer(self.paths["control"], self.handlers())
        # a dead instance may have left routes, rules or an nft table behind
        await self.net(netsetup.teardown, self.paths["net"])
        self.store = Store(self.paths["db"])
        try:
            await self.setup()
            await control.start()
            metrics = None
            if getattr(self.cfg, "metrics_listen", None):
                from .metrics import start as start_metrics
                try:
                    metrics, _ = start_metrics(self, self.cfg.metrics_listen)
                except OSError as e:
                    raise DaemonError(f"cannot serve metrics on {self.cfg.metrics_listen[0]}:"
                                      f"{self.cfg.metrics_listen[1]}: {e.strerror}; change [metrics] listen") from None
            self._drop_privileges()
            self.udp_wakeups = Wakeups(self.sock.fileno())
            for name, target in self.workers():
                t = threading.Thread(target=self._guard, args=(target,), name=name, daemon=True)
                t.start()
                self.threads.append(t)
            log.info("%s started (pid %d)", self.role, os.getpid())
            while not self._stop.is_set():
                self.tick(time.monotonic())
                try:
                    await asyncio.wait_for(self._stop.wait(), TICK_S)
                except asyncio.TimeoutError:
                    pass
            log.info("%s stopping", self.role)
            if metrics is not None:
                metrics.shutdown()
            return 0
        finally:
            self.running = False
            for t in self.threads:
                t.join(timeout=2)
            if self.udp_wakeups is not None:
                self.udp_wakeups.close()
            await control.close()
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

    @staticmethod
    async def net(fn, *args):
        # pyroute2's synchronous API runs its own event loop, which cannot nest inside ours
        return await asyncio.to_thread(fn, *args)

    def _guard(self, target) -> None:
        # a failing data-path thread is restarted (supervise), never the end of the daemon
        supervise(target, lambda: self.running, self.stats, threading.current_thread().name,
                  self._recover_data_path)

    def _recover_data_path(self) -> None:
        """A thread that failed mid-batch may have left the other thread's
        wakeups held (datapath._send_loop, _write_frames): release them."""
        if self.udp_wakeups is not None:
            self.udp_wakeups.release()
        tun = getattr(self, "tun", None)
        if tun is not None and hasattr(tun, "release_wakeups"):
            tun.release_wakeups()

    def stop(self) -> None:
        if self._stop:
            self._stop.set()

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

    def cmd_events(self, req: dict):
        """Recent events newer than `since`; with `follow`, a stream of them as they happen."""
        since = req.get("since", 0)
        backlog = [e for e in self.events.recent if e["ts"] > since]
        if not req.get("follow"):
            return backlog
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)

        async def follow():
            self.events.subscribers.add(queue)
            try:
                for e in backlog:
                    yield e
                while self.running:
                    yield await queue.get()
            finally:
                self.events.subscribers.discard(queue)
        return follow()

    def cmd_stop(self, req: dict) -> dict:
        self.loop.call_soon(self._stop.set)
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
        raise NotImplementedError

    def tick(self, now: float) -> None:
        pass

    def status(self) -> dict:
        return {}

    def shutdown(self) -> None:
        pass

