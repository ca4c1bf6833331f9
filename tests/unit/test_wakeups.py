"""tunnelgate.wakeups on a UDP socket: a datagram that arrives while wakeups
are held does not wake a thread blocked in wait(); release() wakes it at
once; a waiter that arms during a hold is woken as without one. Warmth,
on a given clock: short waits while packets pass, long ones once they stop."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter

from tunnelgate.wakeups import IDLE_WAIT_S, KEEP_WARM_S, WARM_WAIT_S, Wakeups, Warmth


def _pair():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return rx, tx


def test_a_held_waiter_sleeps_through_arrivals_and_wakes_on_release():
    rx, tx = _pair()
    w = Wakeups(rx.fileno())
    woke = []

    def waiter():
        while len(woke) < 2:
            if w.wait(5):
                woke.append(time.monotonic())
                while True:                          # drain, as a receive loop does
                    try:
                        rx.recv(100)
                    except BlockingIOError:
                        break
            else:
                return

    th = threading.Thread(target=waiter, daemon=True)
    try:
        th.start()
        time.sleep(0.1)
        tx.sendto(b"free", rx.getsockname())
        time.sleep(0.2)
        assert len(woke) == 1                         # not held: woken
        w.hold()
        tx.sendto(b"held", rx.getsockname())
        time.sleep(0.3)
        assert len(woke) == 1                         # held: still asleep, the datagram queued
        released = time.monotonic()
        w.release()
        th.join(2)
        assert len(woke) == 2 and woke[1] - released < 0.2
    finally:
        w.close()
        rx.close()
        tx.close()


def test_arming_during_a_hold_sees_what_is_queued_and_a_closed_waiter_returns():
    rx, tx = _pair()
    w = Wakeups(rx.fileno())
    try:
        w.hold()
        tx.sendto(b"x", rx.getsockname())
        time.sleep(0.05)
        assert w.wait(1)                              # wait() arms: the queued datagram counts
        rx.recv(10)
        assert not w.wait(0.05)                       # nothing queued: times out
    finally:
        w.close()
        rx.close()
        tx.close()
    assert not w.wait(0.01)                           # closed: no exception, no wait
    w.hold()
    w.release()


def test_warmth_wakes_the_threads_often_while_packets_pass_and_rarely_after():
    assert WARM_WAIT_S < IDLE_WAIT_S
    stats = Counter(control_rx=3, drop_link_local6=2)
    warmth = Warmth(stats)
    receiver, sender = warmth.timeout, warmth.timeout      # one per daemon, shared by its threads
    assert receiver(100.0) == IDLE_WAIT_S                     # no packet forwarded yet
    stats["tx_packets"] += 1
    assert sender(100.0) == WARM_WAIT_S                       # the sender sent one
    assert receiver(100.5) == WARM_WAIT_S                     # ... which keeps the receiver warm too
    assert receiver(100.0 + KEEP_WARM_S - 0.01) == WARM_WAIT_S
    stats["control_rx"] += 1
    stats["drop_link_local6"] += 1                            # no forwarded packet: no warmth
    assert sender(100.0 + KEEP_WARM_S) == IDLE_WAIT_S         # KEEP_WARM_S after it: idle again
    stats["rx_packets"] += 2
    assert receiver(100.0 + KEEP_WARM_S + 1) == WARM_WAIT_S
    assert sender(100.0 + 2 * KEEP_WARM_S + 1) == IDLE_WAIT_S
    never = Warmth(stats, 0.0)                                # [session] keep_warm_s = 0
    stats["tx_packets"] += 1
    assert never.timeout(300.0) == IDLE_WAIT_S
