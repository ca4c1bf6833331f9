"""tunnelgate.wakeups on a UDP socket: a datagram that arrives while wakeups
are held does not wake a thread blocked in wait(); release() wakes it at
once; a waiter that arms during a hold is woken as without one."""

from __future__ import annotations

import socket
import threading
import time

from tunnelgate.wakeups import Wakeups


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
