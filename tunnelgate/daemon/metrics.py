"""Prometheus metrics (`[metrics] listen`), for a gateway operator and for a client.

Values are read from the daemon at scrape time, so nothing on the data path
pays for them. Counters never go down while the daemon runs, although the
engines remember only their recent contracts (Totals).
"""

from __future__ import annotations

import base64
import ipaddress
import threading
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry


class Totals:
    """Per-key sums of contracts' counters that never go down: a contract that leaves the
    engine's window of remembered ones leaves its last values in the base."""

    def __init__(self):
        self._base: dict[str, list[int]] = {}
        self._last: dict[str, tuple[str, tuple[int, ...]]] = {}
        self._lock = threading.Lock()       # scrapes may overlap (one thread each)

    def update(self, rows: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, list[int]]:
        """rows: contract id -> (key, counters); returns key -> summed counters."""
        with self._lock:
            for cid, (key, values) in self._last.items():
                if cid not in rows:
                    _add(self._base.setdefault(key, [0] * len(values)), values)
            self._last = rows
            out = {key: list(v) for key, v in self._base.items()}
            for key, values in rows.values():
                _add(out.setdefault(key, [0] * len(values)), values)
            return out


def _add(acc: list[int], values) -> None:
    for i, v in enumerate(values):
        acc[i] += v


_SESSION_DROPS = ("bad_mac", "replay", "malformed", "unknown_index", "stale_handshake")


def _session_families(stats: dict, session_stats: dict):
    """Drops by reason (the daemon's and its session's) and completed handshakes."""
    drops = CounterMetricFamily("tunnelgate_dropped_packets", "Packets dropped, by reason", labels=["reason"])
    for k, v in sorted({**stats, **session_stats}.items()):
        if k.startswith("drop_") or k in _SESSION_DROPS:
            drops.add_metric([k.removeprefix("drop_")], v)
    yield drops
    yield CounterMetricFamily("tunnelgate_handshakes", "Completed handshakes", value=stats.get("handshakes", 0))


def _states(contracts: list[dict]) -> GaugeMetricFamily:
    states = GaugeMetricFamily("tunnelgate_contracts", "Contracts by state (ended ones this run remembers)",
                               labels=["state"])
    by_state: dict[str, int] = {}
    for c in contracts:
        by_state[c["state"]] = by_state.get(c["state"], 0) + 1
    for state, n in sorted(by_state.items()):
        states.add_metric([state], n)
    return states


def _event_counter(d, name: str, doc: str, kinds: tuple[str, ...]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=sum(d.events.counts[k] for k in kinds))


class GatewayCollector(Collector):
    def __init__(self, daemon):
        self.d = daemon
        self.totals = Totals()

    def collect(self):
        d = self.d
        stats = dict(d.stats)
        fwd = CounterMetricFamily("tunnelgate_forwarded_bytes", "Inner IP bytes forwarded", labels=["direction"])
        fwd.add_metric(["to_upstream"], stats.get("rx_bytes", 0))
        fwd.add_metric(["to_peers"], stats.get("tx_bytes", 0))
        yield fwd
        yield from _session_families(stats, d.responder.stats)
        with d.elock:           # only the copy: the data path meters under this lock
            objects = d.engine.contract_list(history=True)
        contracts = [c.view(0.0) for c in objects]
        yield _states(contracts)
        revenue = CounterMetricFamily("tunnelgate_revenue_msat", "Paid contracts' value, per peer",
                                      labels=["peer", "address"])
        peer_bytes = CounterMetricFamily("tunnelgate_peer_bytes", "Metered bytes per peer and direction",
                                         labels=["peer", "address", "direction"])
        per_peer = self.totals.update({c["contract_id"]: (c["peer"], (c["cost_msat"] if c["paid"] else 0,
                                                                       c["up"], c["down"]))
                                       for c in contracts})
        for peer_hex, (msat, up, down) in sorted(per_peer.items()):
            raw = bytes.fromhex(peer_hex) if peer_hex else b""
            key = base64.b64encode(raw).decode()
            link = d.links.get(raw)
            addr = str(ipaddress.IPv4Address(link.address)) if link else ""
            revenue.add_metric([key, addr], msat)
            peer_bytes.add_metric([key, addr, "up"], up)
            peer_bytes.add_metric([key, addr, "down"], down)
        yield revenue
        yield peer_bytes
        yield _event_counter(d, "tunnelgate_payment_failures", "Failed payments and revocations",
                             ("payment_failed", "revoked"))
        yield GaugeMetricFamily("tunnelgate_peers", "Peers with a session", value=len(d.responder.peers()))


class ClientCollector(Collector):
    """What a neighbour who buys wants on a dashboard: traffic, spend, contracts, failures."""

    def __init__(self, daemon):
        self.d = daemon
        self.totals = Totals()

    def collect(self):
        d = self.d
        stats = dict(d.stats)
        fwd = CounterMetricFamily("tunnelgate_client_bytes", "Inner IP bytes through the tunnel",
                                  labels=["direction"])
        fwd.add_metric(["sent"], stats.get("tx_bytes", 0))
        fwd.add_metric(["received"], stats.get("rx_bytes", 0))
        yield fwd
        yield from _session_families(stats, d.link.session.stats)
        with d.elock:           # only the copy: the data path meters under this lock
            objects = d.engine.contract_list(history=True)
            spend = d.engine.spend(time.time())
        contracts = [c.view(0.0) for c in objects]
        yield _states(contracts)
        paid = self.totals.update({c["contract_id"]: ("", (c["cost_msat"] if c["paid"] else 0,))
                                   for c in contracts}).get("", [0])[0]
        yield CounterMetricFamily("tunnelgate_paid_msat", "Value of the contracts paid", value=paid)
        committed = GaugeMetricFamily("tunnelgate_committed_msat", "msat committed to accepted contracts",
                                      labels=["window"])
        for window in ("hour", "day", "total"):
            committed.add_metric([window], spend[window])
        yield committed
        yield _event_counter(d, "tunnelgate_payment_failures", "Failed payments and revocations",
                             ("payment_failed", "revoked"))


def start(daemon, listen: tuple[str, int]):
    """Serves /metrics on listen; returns (server, thread) so the daemon can stop it."""
    from prometheus_client import start_http_server
    registry = CollectorRegistry()
    registry.register((ClientCollector if daemon.role == "client" else GatewayCollector)(daemon))
    return start_http_server(listen[1], addr=listen[0], registry=registry)
