"""A gateway and a client configured for a lab, driven through the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tglab.lab import UPSTREAM
from tglab.configs import PORT, write_pair

TG = [sys.executable, "-m", "tunnelgate.cli"]
__all__ = ["PORT", "TG", "TunnelEnv", "ping", "wait_until"]


class TunnelEnv:
    def __init__(self, lab, gateway_extra: str = "", client_extra: str = "",
                 routes: tuple[str, ...] = ("0.0.0.0/0",), address6: str | None = None,
                 listen: str | None = None, user: str = "root"):
        self.lab = lab
        self.dir = Path(tempfile.mkdtemp(prefix="tg-", dir="/tmp"))
        if user != "root":      # the daemons' own user must reach their state_dir
            self.dir.chmod(0o711)
        pair = write_pair(self.dir, gateway_extra, client_extra, routes, tunnel_address6=address6,
                          listen=listen, user=user)
        self.gw_conf, self.client_conf = pair.gateway, pair.client
        self.gw_public, self.client_public = pair.gateway_public, pair.client_public

    def tg(self, ns: str, *args, check=True, timeout=30, **kw) -> subprocess.CompletedProcess:
        return self.lab.run(ns, *TG, *args, check=check, timeout=timeout, **kw)

    def serve(self, **kw):
        return self.tg(self.lab.gw, "serve", "-c", str(self.gw_conf), **kw)

    def up(self, **kw):
        return self.tg(self.lab.client, "up", "-c", str(self.client_conf), **kw)

    def down_all(self) -> None:
        for ns, conf in ((self.lab.client, self.client_conf), (self.lab.gw, self.gw_conf)):
            self.tg(ns, "down", "-c", str(conf), check=False)

    def status(self, which: str) -> dict:
        ns, conf = (self.lab.gw, self.gw_conf) if which == "gw" else (self.lab.client, self.client_conf)
        return json.loads(self.tg(ns, "status", "-c", str(conf), "--json").stdout)

    def events(self, which: str) -> list[dict]:
        from tunnelgate.daemon.control import request
        return request(self.dir / ("gw" if which == "gw" else "cl") / "control.sock", "events")

    def pid(self, which: str) -> int:
        return int((self.dir / ("gw" if which == "gw" else "cl") / "tunnelgate.pid").read_text())

    def kill9(self, which: str) -> None:
        os.kill(self.pid(which), signal.SIGKILL)
        time.sleep(0.2)

    def close(self) -> None:
        self.down_all()
        for which in ("gw", "cl"):
            try:
                os.kill(self.pid(which), signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        out = []
        for which in ("gw", "cl"):
            p = self.dir / which / "tunnelgate.log"
            if p.exists():
                out.append(f"--- {which} log ---\n" + "\n".join(p.read_text().splitlines()[-40:]))
        return "\n".join(out)


def ping(lab, ns: str, dst: str = UPSTREAM, count: int = 3, interval: float = 0.2, wait: float = 1,
         extra: tuple = ()) -> subprocess.CompletedProcess:
    return lab.run(ns, "ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(wait), *extra, dst,
                   check=False, timeout=count * (interval + wait) + 10)


def wait_until(predicate, timeout: float, step: float = 0.1) -> float | None:
    """Seconds until predicate() was true, or None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    return None
