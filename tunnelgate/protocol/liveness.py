"""Is a gateway still there? Detected from the data itself, within a fraction of a second.

A link that sends and hears nothing authenticated back is suspect: after
``probe_after_s`` of such silence the client sends a probe (a control ping the
gateway must answer), after ``dead_after_s`` it declares the gateway dead and
moves its destinations. Silence while *not* sending proves nothing, so an idle
link is never declared dead by this, only by its keepalives failing. RTT and
loss come from the probes' answers. Sans-IO: every call takes ``now``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

DEFAULT_DEAD_AFTER_S = 0.6
PROBE_LOG = 20       # probes remembered for the loss estimate


@dataclass
class Liveness:
    dead_after_s: float = DEFAULT_DEAD_AFTER_S
    probe_after_s: float = 0.0          # 0: a third of dead_after_s
    idle_probe_s: float = 5.0           # probe an idle link this often (RTT, loss, and to notice death)
    last_heard: float | None = None     # last authenticated datagram from the gateway
    first_unanswered_send: float | None = None
    last_probe: float | None = None
    rtt_ms: float | None = None
    dead: bool = False
    _probes: deque = field(default_factory=lambda: deque(maxlen=PROBE_LOG))   # (sent, answered?)
    _outstanding: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dead_after_s <= 0:
            raise ValueError("dead_after_s must be positive")
        if not self.probe_after_s:
            self.probe_after_s = self.dead_after_s / 3

    def sent(self, now: float) -> None:
        if self.first_unanswered_send is None:
            self.first_unanswered_send = now

    def heard(self, now: float) -> bool:
        """An authenticated datagram arrived. Returns True if this revives a dead link."""
        self.last_heard = now
        self.first_unanswered_send = None
        revived, self.dead = self.dead, False
        return revived

    def answered(self, probe_id: int, now: float) -> None:
        sent = self._outstanding.pop(probe_id, None)
        if sent is None:
            return
        sample = (now - sent) * 1000.0
        self.rtt_ms = sample if self.rtt_ms is None else 0.75 * self.rtt_ms + 0.25 * sample
        for i, (t, _) in enumerate(self._probes):
            if t == sent:
                self._probes[i] = (t, True)
        self.heard(now)

    def poll(self, now: float, probe_id: int) -> tuple[bool, bool]:
        """(send a probe with ``probe_id`` now, the link just died)."""
        died = False
        silent_since = self.first_unanswered_send
        if silent_since is not None and not self.dead and now - silent_since >= self.dead_after_s:
            self.dead = died = True
        probe = False
        since_probe = None if self.last_probe is None else now - self.last_probe
        if silent_since is not None and now - silent_since >= self.probe_after_s:
            probe = since_probe is None or since_probe >= self.probe_after_s
        elif since_probe is None or since_probe >= self.idle_probe_s:
            probe = True
        if probe:
            self.last_probe = now
            self._outstanding[probe_id] = now
            self._probes.append((now, False))
            if len(self._outstanding) > PROBE_LOG:
                self._outstanding.pop(next(iter(self._outstanding)))
            self.sent(now)
        return probe, died

    def loss(self, now: float) -> float:
        """Unanswered share of the probes old enough to have been answered."""
        settled = [ok for t, ok in self._probes if now - t >= self.dead_after_s]
        return 0.0 if not settled else 1.0 - sum(settled) / len(settled)

    def next_deadline(self) -> float:
        """When poll() has something to do (a probe due, or the link due to be declared dead)."""
        last = self.last_probe if self.last_probe is not None else float("-inf")
        first = self.first_unanswered_send
        if first is None or self.dead:
            return max(last + self.idle_probe_s, 0.0) if first is None else last + self.probe_after_s
        return min(first + self.dead_after_s, max(first, last) + self.probe_after_s)
