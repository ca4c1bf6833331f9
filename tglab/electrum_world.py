"""A regtest world for the electrum payment backend, on 127.0.0.1 only:

    Bitcoin Knots regtest node (scripts/regtest)
      └─ ElectrumX (scripts/install-electrum's private venv)
           ├─ Electrum daemon "gateway" (lightning_listen on 127.0.0.1)
           └─ Electrum daemon "client", funded, with a Lightning channel to the gateway

Electrum 4.3.4 (Debian 12's python3-electrum) runs under /usr/bin/python3, each daemon in
its own data directory with a JSON-RPC user/password; everything is started here as a child
process and stopped by its PID.

    world = ElectrumWorld(tmpdir); world.up(); ...; world.down()
    python -m tglab.electrum_world up DIR     (prints the RPC URLs; ``down DIR``)

The steps follow Electrum's own tests/regtest/regtest.sh at tag 4.3.4 (setconfig for
regtest, lightning_listen on the receiving side, open_channel, 3 blocks to confirm it).
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ELECTRUM = "/usr/lib/python3/dist-packages/electrum/electrum"
SYSTEM_PY = "/usr/bin/python3"     # run with -P: the script's own dir holds electrum/logging.py
EXVENV = Path(os.environ.get("TUNNELGATE_ELECTRUMX_VENV", REPO / ".cache/electrumx"))
REGTEST = REPO / "scripts/regtest"

CHANNEL_BTC = "0.1"          # client -> gateway capacity: 10 M sat, far above the tests' needs
FUND_BTC = "1"


class WorldError(RuntimeError):
    """A piece of the world could not be started: the message says which and why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except WorldError:           # a process died: no point waiting
            raise
        except Exception as e:       # not up yet
            last = e
        time.sleep(step)
    raise WorldError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


@dataclass
class Wallet:
    name: str
    datadir: Path
    port: int
    user: str
    password: str
    ln_port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.port}"

    def rpc(self, method: str, timeout: float = 60, **params) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}", data=body, headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            out = json.loads(r.read())
        if out.get("error"):
            raise WorldError(f"electrum {self.name} {method}: {out['error'].get('message')}")
        return out["result"]

    def cli(self, *args: str, timeout: float = 60) -> str:
        r = subprocess.run([SYSTEM_PY, "-P", ELECTRUM, "--regtest", "-D", str(self.datadir), *args],
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise WorldError(f"electrum {self.name} {' '.join(args)} failed: {r.stderr.strip()[-800:]}")
        return r.stdout.strip()


class ElectrumWorld:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.node_dir = self.root / "knots"
        self.ex_dir = self.root / "electrumx"
        self.ex_port = 0
        self.ex_proc: subprocess.Popen | None = None
        self.node_up = False
        self.wallets: dict[str, Wallet] = {}

    # -- pieces ---------------------------------------------------------------------------
    @staticmethod
    def check_installed() -> str | None:
        """None when everything is installed, else what is missing and how to install it."""
        if not os.path.exists(ELECTRUM):
            return f"{ELECTRUM} is missing: python3-electrum is not installed (scripts/install-electrum)"
        if not (EXVENV / "bin/electrumx_server").exists():
            return f"ElectrumX is not installed in {EXVENV} (scripts/install-electrum)"
        r = subprocess.run([str(REGTEST), "fetch"], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            return f"Bitcoin Knots is not available (scripts/regtest fetch exit {r.returncode}): {r.stderr[-600:]}"
        return None

    def knots(self, *args: str, timeout: float = 60) -> str:
        r = subprocess.run([str(REGTEST), "cli", str(self.node_dir), *args], capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise WorldError(f"bitcoin-cli {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout.strip()

    def mine(self, n: int = 1) -> None:
        subprocess.run([str(REGTEST), "mine", str(self.node_dir), str(n)], check=True, timeout=60,
                       capture_output=True)

    def height(self) -> int:
        return int(self.knots("getblockcount"))

    def start_node(self) -> None:
        self.node_dir.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([str(REGTEST), "start", str(self.node_dir), "--txindex"], capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise WorldError(f"scripts/regtest start failed: {r.stdout}{r.stderr}")
        self.node_up = True

    def start_electrumx(self) -> None:
        conf = dict(line.split("=", 1) for line in (self.node_dir / "bitcoin.conf").read_text().splitlines()
                    if "=" in line)
        self.ex_dir.mkdir(parents=True, exist_ok=True)
        self.ex_port = free_port()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.ex_dir),
               "COIN": "Bitcoin", "NET": "regtest", "DB_ENGINE": "leveldb", "DB_DIRECTORY": str(self.ex_dir / "db"),
               "DAEMON_URL": f"http://{conf['rpcuser']}:{conf['rpcpassword']}@127.0.0.1:{conf['rpcport']}/",
               "SERVICES": f"tcp://127.0.0.1:{self.ex_port}", "PEER_DISCOVERY": "off",
               "PEER_ANNOUNCE": "", "COST_SOFT_LIMIT": "0", "COST_HARD_LIMIT": "0", "CACHE_MB": "50",
               # regtest blocks come every few seconds here, not every 10 minutes
               "DAEMON_POLL_INTERVAL_BLOCKS": "200", "DAEMON_POLL_INTERVAL_MEMPOOL": "200",
               "LOG_LEVEL": "warning",
               "ALLOW_ROOT": "1"}     # tests run as root (namespaces); it binds 127.0.0.1 only
        (self.ex_dir / "db").mkdir(exist_ok=True)
        log = open(self.ex_dir / "electrumx.log", "ab")
        self.ex_proc = subprocess.Popen([str(EXVENV / "bin/electrumx_server")], env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def listening():
            if self.ex_proc.poll() is not None:
                raise WorldError(f"electrumx exited {self.ex_proc.returncode}: "
                                 f"{(self.ex_dir / 'electrumx.log').read_text()[-1500:]}")
            with socket.create_connection(("127.0.0.1", self.ex_port), timeout=1):
                return True
        wait_for(listening, 60, "ElectrumX to listen")

    def create_wallet(self, name: str, listen: bool) -> Wallet:
        d = self.root / name
        # hex: a password that starts with "-" would be read as an option by `electrum setconfig`
        w = Wallet(name, d, free_port(), "tg-" + name, secrets.token_hex(18))
        w.cli("create", "--offline")
        settings = {"rpcuser": w.user, "rpcpassword": w.password, "rpchost": "127.0.0.1",
                    "rpcport": str(w.port), "server": f"127.0.0.1:{self.ex_port}:t", "oneserver": "true",
                    "auto_connect": "false", "use_gossip": "true", "log_to_file": "true",
                    "lightning_to_self_delay": "144",
                    # no fee estimates from a regtest node: a fixed 2 sat/vB
                    "dynamic_fees": "false", "fee_per_kb": "2000"}
        if listen:
            w.ln_port = free_port()
            settings["lightning_listen"] = f"127.0.0.1:{w.ln_port}"
        for k, v in settings.items():
            w.cli("setconfig", "--offline", k, v)
        self.wallets[name] = w
        return w

    def start_daemon(self, w: Wallet) -> None:
        log = open(w.datadir / "daemon.out", "ab")
        w.proc = subprocess.Popen([SYSTEM_PY, "-P", ELECTRUM, "--regtest", "-D", str(w.datadir), "daemon"],
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "HOME": str(w.datadir)})
        log.close()

        def answers():
            if w.proc.poll() is not None:
                raise WorldError(f"electrum {w.name} exited {w.proc.returncode}: "
                                 f"{(w.datadir / 'daemon.out').read_text()[-1500:]}")
            return w.rpc("getinfo", timeout=5)
        wait_for(answers, 60, f"electrum daemon {w.name}")
        if not w.rpc("load_wallet"):
            raise WorldError(f"electrum {w.name}: load_wallet failed")
        wait_for(lambda: w.rpc("is_synchronized") and w.rpc("getinfo")["blockchain_height"] >= self.height(),
                 60, f"electrum {w.name} to sync with ElectrumX")

    def kill_daemon(self, w: Wallet, sig: int = signal.SIGKILL) -> None:
        if w.proc is not None and w.proc.poll() is None:
            os.kill(w.proc.pid, sig)
            w.proc.wait(30)
        w.proc = None
        (w.datadir / "regtest" / "daemon").unlink(missing_ok=True)    # the lock a killed daemon leaves

    def wait_synced(self, *names: str, timeout: float = 60) -> None:
        h = self.height()
        for n in names or tuple(self.wallets):
            w = self.wallets[n]
            wait_for(lambda: w.rpc("getinfo")["blockchain_height"] >= h and w.rpc("is_synchronized"),
                     timeout, f"electrum {n} at height {h}")

    # -- the whole world ---------------------------------------------------------------------
    def up(self, channel_btc: str = CHANNEL_BTC, fund_btc: str = FUND_BTC) -> "ElectrumWorld":
        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self.start_node()
        self.start_electrumx()
        gw = self.create_wallet("gateway", listen=True)
        cl = self.create_wallet("client", listen=False)
        for w in (gw, cl):
            self.start_daemon(w)
        addr = cl.rpc("getunusedaddress")
        self.knots("-rpcwallet=client", "sendtoaddress", addr, fund_btc)
        self.mine(1)
        wait_for(lambda: int(float(cl.rpc("getbalance").get("confirmed", 0)) * 1e8) > 0, 60,
                 "the client's Electrum wallet to see its funding")
        node = gw.rpc("nodeid")
        self.channel_point = cl.rpc("open_channel", connection_string=node, amount=channel_btc, timeout=120)
        wait_for(lambda: cl.rpc("list_channels"), 30, "the channel to appear")
        self.mine(3)       # Electrum's funding min depth is 3
        wait_for(lambda: all(c["state"] == "OPEN" for w in (cl, gw) for c in w.rpc("list_channels")
                             if c["type"] == "CHANNEL") and gw.rpc("list_channels"),
                 90, "the channel to be OPEN on both sides")
        self.ready_s = time.monotonic() - t0
        (self.root / "world.json").write_text(json.dumps(self.describe(), indent=2))
        return self

    def describe(self) -> dict:
        return {"electrumx": f"127.0.0.1:{self.ex_port}", "node_dir": str(self.node_dir),
                "pids": {"electrumx": self.ex_proc.pid if self.ex_proc else None,
                         **{n: w.proc.pid if w.proc else None for n, w in self.wallets.items()}},
                **{n: {"url": w.url, "datadir": str(w.datadir), "rpcport": w.port}
                   for n, w in self.wallets.items()}}

    def down(self) -> None:
        for w in self.wallets.values():
            if w.proc is not None and w.proc.poll() is None:
                try:
                    w.rpc("stop", timeout=10)
                    w.proc.wait(15)
                except Exception:
                    pass
            self.kill_daemon(w)
        if self.ex_proc is not None and self.ex_proc.poll() is None:
            self.ex_proc.send_signal(signal.SIGINT)
            try:
                self.ex_proc.wait(20)
            except subprocess.TimeoutExpired:
                self.ex_proc.kill()
                self.ex_proc.wait(10)
        if self.node_up:
            subprocess.run([str(REGTEST), "stop", str(self.node_dir)], capture_output=True, timeout=60)
            self.node_up = False


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print("usage: python -m tglab.electrum_world up|down DIR", file=sys.stderr)
        return 2
    cmd, root = argv[0], Path(argv[1])
    if cmd == "up":
        why = ElectrumWorld.check_installed()
        if why:
            print(f"electrum_world: {why}", file=sys.stderr)
            return 3
        w = ElectrumWorld(root)
        try:
            w.up()
        except BaseException:
            w.down()
            raise
        print(json.dumps(w.describe(), indent=2))
        print(f"ready in {w.ready_s:.1f} s; stop with: python -m tglab.electrum_world down {root}")
        return 0
    info = json.loads((root / "world.json").read_text())
    for name in ("gateway", "client"):
        pid = info["pids"].get(name)
        if pid:
            _kill(pid, signal.SIGTERM)
    if info["pids"].get("electrumx"):
        _kill(info["pids"]["electrumx"], signal.SIGINT)
    subprocess.run([str(REGTEST), "stop", info["node_dir"]], capture_output=True, timeout=60)
    return 0


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
