"""The real tunnelgate daemons as the benchmarks drive them: through the CLI,
inside a lab's namespaces. bench.py and scale.py both use these, so neither
imports the other for them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TG = [sys.executable, "-m", "tunnelgate.cli"]
TG_PORT = 51900


def tg(lab, ns, *args, timeout=60) -> subprocess.CompletedProcess:
    """`tunnelgate ARGS` in namespace `ns`; a failure raises with the tail of its output."""
    r = lab.run(ns, *TG, *args, check=False, timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"tunnelgate {args[0]} failed (exit {r.returncode}): "
                           f"{(r.stderr or r.stdout).strip()[-400:]}")
    return r


def tg_down(lab, ns: str, conf: Path, pid: int | None) -> None:
    """`tunnelgate down` for the daemon of `conf` in `ns`; SIGKILL for its
    process `pid` if it is still there 5 s later."""
    lab.run(ns, *TG, "down", "-c", str(conf), check=False, timeout=30)
    if pid:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tg_version() -> str:
    from tunnelgate import __version__ as v  # noqa: F401
    try:
        rev = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "describe", "--always",
                              "--dirty"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        rev = ""
    return f"tunnelgate {v}" + (f" ({rev})" if rev else "")
