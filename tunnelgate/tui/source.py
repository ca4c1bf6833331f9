"""Where the TUI gets its data: the daemon's control socket, or recorded snapshots.

A source has three calls, all blocking (the app calls them from a worker thread):

    status()        -> the daemon's `status` result (dict)
    events(since)   -> events with ts > since (list of dicts, oldest first)
    set(**kw)       -> the result of {"cmd": "set", **kw}
    gateways()      -> a client's `gateways` result (list of dicts, as `tunnelgate gateways
                       --json`); a gateway daemon answers unknown_command

Errors are raised as `ControlError` (code "not_running" when no daemon listens).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..daemon.control import ControlError, request

__all__ = ["Source", "SocketSource", "RecordedSource", "ControlError"]


@runtime_checkable
class Source(Protocol):
    def status(self) -> dict: ...

    def events(self, since: float) -> list[dict]: ...

    def set(self, **kw: Any) -> Any: ...

    def gateways(self) -> list[dict]: ...


class SocketSource:
    """The live daemon: one short request per call, so a hung daemon costs `timeout` s
    of a worker thread, never the UI."""

    def __init__(self, path: str | Path, timeout: float = 2.0):
        self.path = Path(path)
        self.timeout = timeout

    def _call(self, cmd: str, **args: Any) -> Any:
        try:
            return request(self.path, cmd, timeout=self.timeout, **args)
        except ControlError:
            raise
        except (OSError, ValueError) as e:  # a daemon dying mid-reply, garbage on the socket
            raise ControlError("io", f"talking to {self.path} failed: {e}") from None

    def status(self) -> dict:
        return self._call("status")

    def events(self, since: float) -> list[dict]:
        return self._call("events", since=since)

    def set(self, **kw: Any) -> Any:
        return self._call("set", **kw)

    def gateways(self) -> list[dict]:
        return self._call("gateways")


class RecordedSource:
    """Replays recorded snapshots for tests and demos.

    snapshots: a list of {"status": {...}, "events": [...], "gateways": [...]} (gateways:
    a client's, optional) as recorded from a live daemon, or None for "the daemon is not running" at that point.  Every status()
    call moves to the next snapshot (staying on the last one); events(since) returns
    the events of the snapshots seen so far with ts > since.  set() calls are kept in
    `sets`; `set_error` (a ControlError) makes them fail, like a daemon without `set`.
    """

    def __init__(self, snapshots: list[dict | None], set_error: ControlError | None = None):
        if not snapshots:
            raise ValueError("RecordedSource needs at least one snapshot")
        self.snapshots = snapshots
        self.index = -1
        self.sets: list[dict] = []
        self.set_error = set_error
        self.set_result: Any = {"ok": True}

    @classmethod
    def load(cls, path: str | Path, **kw: Any) -> "RecordedSource":
        return cls(json.loads(Path(path).read_text()), **kw)

    def _current(self) -> dict | None:
        return self.snapshots[max(0, self.index)]

    def status(self) -> dict:
        self.index = min(self.index + 1, len(self.snapshots) - 1)
        snap = self._current()
        if snap is None:
            raise ControlError("not_running", "no daemon is listening (recorded)")
        return snap["status"]

    def events(self, since: float) -> list[dict]:
        if self._current() is None:
            raise ControlError("not_running", "no daemon is listening (recorded)")
        seen = [e for s in self.snapshots[:max(0, self.index) + 1] if s for e in s.get("events", [])]
        return [e for e in seen if e["ts"] > since]

    def gateways(self) -> list[dict]:
        snap = self._current()
        if snap is None:
            raise ControlError("not_running", "no daemon is listening (recorded)")
        if "gateways" not in snap:
            raise ControlError("unknown_command", "unknown command 'gateways' (recorded)")
        return snap["gateways"]

    def set(self, **kw: Any) -> Any:
        self.sets.append(kw)
        if self.set_error is not None:
            raise self.set_error
        return self.set_result
