"""Where a node keeps its state: the files under ``state_dir`` and the pid of a daemon
running on them.

Neutral ground between the daemon, which creates these files, and the CLI and TUI,
which only find them (the control socket, the pid file, the history database): neither
side imports the other for it.
"""

from __future__ import annotations

from pathlib import Path


def state_paths(state_dir: Path) -> dict[str, Path]:
    return {
        "pid": state_dir / "tunnelgate.pid",
        "control": state_dir / "control.sock",
        "log": state_dir / "tunnelgate.log",
        "db": state_dir / "tunnelgate.db",
        "net": state_dir / "net.json",
    }


def running_pid(pidfile: Path) -> int | None:
    """The pid in pidfile if that process is alive and is a tunnelgate daemon."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    return pid if b"tunnelgate" in cmdline else None
