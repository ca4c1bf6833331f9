"""The control thread's loop (daemon/base.py: Daemon._timers) sleeps until the earliest
deadline its state knows (the engines' timers among them), at most MAX_SLEEP_S after the
last tick, packets flowing or not, and a poke() makes it look again at once. Driven by a clock of its own:
each wait advances the clock by what was asked (or, woken early, by less), so the
ticks' instants are exact."""

from __future__ import annotations

import asyncio
import collections
import time
import types

import pytest

from tunnelgate.daemon import base
from tunnelgate.daemon.base import MAX_SLEEP_S, MIN_SLEEP_S, Daemon

T0 = 100.0


class Timers(Daemon):
    """Only the loop: ticks recorded, deadlines scripted."""

    def __init__(self):     # noqa: the rest of a daemon is not needed here
        self.ticks: list[float] = []
        self.deadline: float | None = None
        self.on_tick = None
        self.stats = collections.Counter()

    def tick(self, now: float) -> None:
        self.ticks.append(now)
        if self.on_tick:
            self.on_tick(self, now)

    def next_deadline(self) -> float | None:
        return self.deadline


def run(monkeypatch, d: Timers, waits: int, early: dict | None = None) -> list[float]:
    """Run d._timers for `waits` waits on a fake clock; early: wait number -> (seconds,
    action): that wait is woken by a poke after `seconds`, once action(d, now) ran."""
    clock = [T0]
    asked = []
    monkeypatch.setattr(base, "time", types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time))

    async def wait_for(aw, timeout):
        aw.close()
        asked.append(timeout)
        if len(asked) >= waits:
            d._stop.set()
        if early and len(asked) in early:
            after, action = early[len(asked)]
            clock[0] += after
            action(d, clock[0])
            return True
        clock[0] += timeout
        raise asyncio.TimeoutError

    monkeypatch.setattr(base.asyncio, "wait_for", wait_for)

    async def main():
        d._stop, d._woken = asyncio.Event(), asyncio.Event()
        await d._timers()

    asyncio.run(main())
    return asked


def test_with_no_deadline_it_ticks_every_max_sleep(monkeypatch):
    d = Timers()
    asked = run(monkeypatch, d, 5)
    assert d.ticks == pytest.approx([T0, T0 + MAX_SLEEP_S, T0 + 2 * MAX_SLEEP_S])
    assert asked == pytest.approx([MIN_SLEEP_S, MAX_SLEEP_S - MIN_SLEEP_S] * 2 + [MIN_SLEEP_S])


def test_it_wakes_at_the_earliest_deadline_and_not_before(monkeypatch):
    d = Timers()
    d.deadline = T0 + 0.13
    d.on_tick = lambda d, now: setattr(d, "deadline", now + 0.13 if now < T0 + 0.2 else None)
    run(monkeypatch, d, 7)
    # the first tick at once, then each at its deadline, then the bound
    assert d.ticks == pytest.approx([T0, T0 + 0.13, T0 + 0.26, T0 + 0.26 + MAX_SLEEP_S])


def test_a_poke_makes_it_look_again_and_a_nearer_deadline_is_kept(monkeypatch):
    d = Timers()

    def new_deadline(d, now):      # e.g. a control message queued a retransmission
        d.deadline = now + 0.05

    # wait 2 is the long sleep after the first tick: poked 0.1 s into it
    run(monkeypatch, d, 4, early={2: (0.1, new_deadline)})
    assert d.ticks == pytest.approx([T0, T0 + MIN_SLEEP_S + 0.1 + 0.05])


def test_a_poke_with_nothing_due_ticks_no_sooner(monkeypatch):
    d = Timers()
    asked = run(monkeypatch, d, 4, early={2: (0.1, lambda d, now: None)})
    assert d.ticks == pytest.approx([T0, T0 + MAX_SLEEP_S])
    assert asked[2] == pytest.approx(MAX_SLEEP_S - MIN_SLEEP_S - 0.1)


def test_packets_flowing_make_it_tick_no_sooner_than_its_deadlines(monkeypatch):
    """No fixed busy tick: what traffic makes due, the data threads tell (a poke) or the
    engines' deadlines say."""
    d = Timers()

    def traffic(d, now):
        d.stats["rx_packets"] += 10

    d.on_tick = traffic
    run(monkeypatch, d, 7)
    assert d.ticks == pytest.approx([T0, T0 + MAX_SLEEP_S, T0 + 2 * MAX_SLEEP_S, T0 + 3 * MAX_SLEEP_S])
