"""`status`, `contracts` and the metrics scrape build their contract views
outside the daemon's engine lock: the data path meters under that lock, and
with 10,000 contracts the views take ≈ 17 ms, a stall of every packet each
time the TUI (once a second) or Prometheus asks. Under the lock they only
copy the engine's lists. The client's `status` likewise (one contract per
destination it reaches)."""

from __future__ import annotations

import collections
import threading
import types

from engine_world import World
from tunnelgate.daemon.base import Daemon
from tunnelgate.daemon.client import ClientDaemon
from tunnelgate.daemon.gateway import GatewayDaemon
from tunnelgate.daemon.links import Links
from tunnelgate.daemon.metrics import GatewayCollector
from tglab.engines import EngineBuilder
from tunnelgate.protocol.contract import Contract

NOW = 1000.5


def _daemon(contracts: int = 30):
    engine = EngineBuilder(per_peer=10).grow(contracts).engine
    responder = types.SimpleNamespace(stats={}, peers=lambda: [])
    return types.SimpleNamespace(elock=threading.Lock(), engine=engine, stats=collections.Counter(),
                                 responder=responder, links=Links(),
                                 events=types.SimpleNamespace(recent=[], counts=collections.Counter()))


def _views_watched(monkeypatch, lock):
    """Contract.view, recording whether `lock` was held at each call."""
    held = []
    view = Contract.view

    def watched(self, now):
        held.append(lock.locked())
        return view(self, now)

    monkeypatch.setattr(Contract, "view", watched)
    return held


def test_contracts_command_views_outside_the_engine_lock(monkeypatch):
    d = _daemon()
    held = _views_watched(monkeypatch, d.elock)
    got = Daemon.cmd_contracts(d, {"all": True})
    assert len(got) == 30 and len(held) == 30 and not any(held)


def test_gateway_status_views_outside_the_engine_lock(monkeypatch):
    d = _daemon()
    held = _views_watched(monkeypatch, d.elock)
    st = GatewayDaemon._market_status(d)
    assert len(st["contracts"]) == 30 and len(st["peers"]) == 3
    assert len(held) == 30 and not any(held)


def test_metrics_views_outside_the_engine_lock(monkeypatch):
    d = _daemon()
    held = _views_watched(monkeypatch, d.elock)
    families = {f.name: f for f in GatewayCollector(d).collect()}
    assert sum(s.value for s in families["tunnelgate_contracts"].samples) == 30
    assert len(held) == 30 and not any(held)


def test_status_from_a_snapshot_shows_what_the_snapshot_held():
    b = EngineBuilder(per_peer=10).grow(20)
    snapshot = b.engine.status_snapshot()
    b.grow(40)                      # the data path goes on after the copy
    st = b.engine.status(NOW, snapshot)
    assert len(st["contracts"]) == 20 and len(st["peers"]) == 2
    assert len(b.engine.status(NOW)["contracts"]) == 40
    peer = b.flows[0][0]
    assert {c.peer for c in b.engine.contract_list(peer)} == {peer}
    assert len(b.engine.contract_list(peer)) == 10


def test_client_status_views_outside_the_engine_lock(monkeypatch):
    w = World(loss=0, reorder=0)
    dests = ["198.18.2.2", "198.18.2.3", "198.18.2.4"]
    for dst in dests:
        w.send(dst)
    w.run(1)
    d = types.SimpleNamespace(elock=threading.Lock(), engine=w.cl)
    held = _views_watched(monkeypatch, d.elock)
    st = ClientDaemon._market_status(d)
    assert sorted(st["destinations"]) == [f"{x}/32" for x in dests]
    assert [c["state"] for c in st["contracts"]] == ["PAID"] * 3
    assert len(held) == 3 and not any(held)
    assert st["pause_buying"] is False
    # status from a snapshot shows the contracts it copied, not those bought since
    snapshot = w.cl.status_snapshot(w.now)
    w.send("198.18.2.5")
    w.run(1)
    assert len(w.cl.status(w.now, snapshot)["contracts"]) == 3
    assert len(w.cl.status(w.now)["contracts"]) == 4
