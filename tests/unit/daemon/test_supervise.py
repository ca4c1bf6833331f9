"""A data-path thread that fails is logged and restarted, never the end of
the daemon: with a real receive loop (UDP on loopback, real sessions, a TUN
stand-in) whose handler raises once, the next datagram still gets through;
and the supervisor's back-off and rate-limited logging."""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time

from tunnelgate.daemon import datapath_gateway, supervise as sv
from tunnelgate.session import DATA

from gateway_plane import OWN, UPSTREAM, gateway_plane, tcp
from session_lab import Lab


def test_a_receive_thread_whose_handler_raises_is_restarted_and_traffic_continues(monkeypatch, caplog):
    lab = Lab()
    lab.now = time.monotonic()
    lab.connect()
    gw = gateway_plane(lab.gw)
    real = datapath_gateway.udp_handler
    calls = []

    def failing_once(plane):
        handle = real(plane)

        def wrapped(groups, own_tun=False):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("injected data path failure")
            return handle(groups, own_tun)
        return wrapped

    monkeypatch.setattr(datapath_gateway, "udp_handler", failing_once)
    worker = threading.Thread(target=gw.run, name="udp-to-tun", args=(datapath_gateway.udp_to_tun,),
                              daemon=True)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caplog.set_level(logging.ERROR, logger="tunnelgate")
    worker.start()
    try:
        deadline = time.monotonic() + 10
        sender.sendto(lab.client.seal(DATA, tcp(OWN, UPSTREAM, b"lost"), lab.now), gw.sock.getsockname())
        while gw.stats["thread_restarts"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        sender.sendto(lab.client.seal(DATA, tcp(OWN, UPSTREAM, b"after"), lab.now), gw.sock.getsockname())
        while gw.stats["rx_packets"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        alive = worker.is_alive()
    finally:
        gw.running = False
        worker.join(3)
        sender.close()
        gw.sock.close()
    assert alive
    assert gw.stats["thread_restarts"] == 1 and gw.stats["thread_restarts_udp-to-tun"] == 1
    assert gw.stats["rx_packets"] == 1
    assert gw.tun.frames[0].endswith(b"after")
    [record] = [r for r in caplog.records if "restarting" in r.getMessage()]
    assert "udp-to-tun" in record.getMessage() and record.exc_info[0] is RuntimeError


def test_repeated_failures_back_off_and_are_logged_at_a_limited_rate(caplog):
    clock = [0.0]
    sleeps = []
    stats = collections.Counter()
    runs = [0]

    def target():
        runs[0] += 1
        clock[0] += 0.001
        if runs[0] < 12:
            raise IndexError("boom")

    def sleep(s):
        sleeps.append(s)
        clock[0] += s

    caplog.set_level(logging.ERROR, logger="tunnelgate")
    recovered = []
    sv.supervise(target, lambda: True, stats, "tun-to-udp", lambda: recovered.append(1),
                 sleep=sleep, clock=lambda: clock[0])
    assert runs[0] == 12 and stats["thread_restarts"] == 11 and len(recovered) == 11
    # the first BURST restarts at once, then sleeps doubling from BACKOFF_S
    assert sleeps[:3] == [sv.BACKOFF_S, sv.BACKOFF_S * 2, sv.BACKOFF_S * 4]
    assert len(sleeps) == 11 - sv.BURST and max(sleeps) <= sv.BACKOFF_MAX_S
    logged = [r for r in caplog.records if "restarting" in r.getMessage()]
    assert 1 <= len(logged) < 11


def test_a_thread_that_returns_is_not_restarted():
    runs = []
    sv.supervise(lambda: runs.append(1), lambda: True, collections.Counter(), "x")
    assert runs == [1]
