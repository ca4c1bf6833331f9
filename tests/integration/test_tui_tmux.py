"""`tunnelgate tui` on a live lab, in a real terminal (tmux): the client view shows the
live contract, the gateway view its peer, and a stopped daemon is reported."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tgenv import TunnelEnv, ping, wait_until
from tglab.lab import UPSTREAM

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
DST = f"{UPSTREAM}/32"


class Tmux:
    """Detached sessions, each on a private tmux server (its own socket, so its size is
    its own and nobody else's tmux is touched); all killed at the end."""

    def __init__(self, width: int = 160, height: int = 48):
        self.tag = f"tgtui{secrets.token_hex(4)}"
        self.width, self.height = width, height
        self.sessions: list[str] = []

    def tmux(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", f"{self.tag}-{name}", *args], capture_output=True, text=True,
                              timeout=10, check=check)

    def start(self, name: str, command: str) -> str:
        self.tmux(name, "new-session", "-d", "-s", name, "-x", str(self.width), "-y", str(self.height),
                  "-c", str(REPO), command)
        self.sessions.append(name)
        return name

    def capture(self, name: str) -> str:
        return self.tmux(name, "capture-pane", "-p", "-t", name, check=False).stdout

    def keys(self, name: str, *keys: str) -> None:
        self.tmux(name, "send-keys", "-t", name, *keys)

    def alive(self, name: str) -> bool:
        return self.tmux(name, "has-session", "-t", name, check=False).returncode == 0

    def wait_for(self, name: str, *needles: str, timeout: float = 20) -> str:
        screen = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.capture(name)
            if all(n in screen for n in needles):
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{needles} not on screen after {timeout} s:\n{screen}")

    def close(self) -> None:
        for name in self.sessions:
            self.tmux(name, "kill-session", "-t", name, check=False)
            self.tmux(name, "kill-server", check=False)   # our private server only
            sock = Path(f"/tmp/tmux-{os.geteuid()}/{self.tag}-{name}")
            if sock.is_socket():
                sock.unlink()


@pytest.fixture
def tmux():
    if shutil.which("tmux") is None:
        pytest.skip("tmux not installed (apt-get install tmux): the TUI test needs a real terminal")
    t = Tmux()
    yield t
    t.close()


def tui_command(lab, ns: str, conf: Path) -> str:
    # COLUMNS/LINES leak into tmux from the test run and would pin textual to 80x24
    return f"env -u COLUMNS -u LINES ip netns exec {lab.ns(ns)} {sys.executable} -m tunnelgate.tui -c {conf}"


def test_tui_shows_live_contract_and_stopped_daemon(lab, tmux):
    lab.start_upstream({"1M.bin": 1_000_000})
    env = TunnelEnv(lab, gateway_extra='[pricing]\ndefault_price = "0.5"\ncontract_kb = 2000\n',
                    client_extra='[policy]\nmax_price = "1"\nmax_spend_per_hour = 100000\n')
    try:
        env.serve()
        env.up()
        ping(lab, lab.client, count=3)

        def live_contract():
            cs = env.status("client")["market"]["contracts"]
            return any(c["destination"] == DST and c["state"] in ("PAID", "GRACE") for c in cs)
        assert wait_until(live_contract, 15) is not None, env.logs()
        lab.run(lab.client, "curl", "-s", "-o", "/dev/null", f"http://{UPSTREAM}:8080/1M.bin", timeout=30)

        client = tmux.start("client", tui_command(lab, "client", env.client_conf))
        gateway = tmux.start("gateway", tui_command(lab, "gw", env.gw_conf))

        screen = tmux.wait_for(client, DST, "connected")
        row = next(line for line in screen.splitlines() if DST in line)
        assert "PAID" in row or "GRACE" in row, screen
        assert "spend / budget" in screen and "/ 100 sat" in screen, screen
        assert "throughput" in screen and "events" in screen, screen

        screen = tmux.wait_for(gateway, "peers", "100.64.0.2", DST)
        row = next(line for line in screen.splitlines() if DST in line)
        assert "PAID" in row or "GRACE" in row, screen
        assert "revenue" in screen and "1 sat" in screen, screen   # 2000 KB at 0.5 msat/KB, paid
        print("--- client view ---\n" + tmux.capture(client) + "\n--- gateway view ---\n" + screen)

        # the daemon stops: the view says so and keeps trying
        env.tg(lab.client, "down", "-c", str(env.client_conf))
        screen = tmux.wait_for(client, "daemon not running", timeout=10)
        assert tmux.alive(client), screen

        tmux.keys(client, "q")
        tmux.keys(gateway, "q")
        assert wait_until(lambda: not tmux.alive(client) and not tmux.alive(gateway), 5) is not None, \
            "q did not quit the TUI"
    finally:
        logs = env.logs()
        env.close()
        print(logs)
