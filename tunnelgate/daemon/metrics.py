"""Prometheus metrics for a gateway operator (`[metrics] listen`).

Values are read from the daemon at scrape time, so nothing on the data path
pays for them.
"""

from __future__ import annotations

import base64
import ipaddress

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry


class GatewayCollector(Collector):
    def __init__(self, daemon):
        self.d = daemon

    def collect(self):
        d = self.d
        stats = dict(d.stats)
        fwd = CounterMetricFamily("tunnelgate_forwarded_bytes", "Inner IP bytes forwarded", labels=["direction"])
        fwd.add_metric(["to_upstream"], stats.get("rx_bytes", 0))
        fwd.add_metric(["to_peers"], stats.get("tx_bytes", 0))
        yield fwd
        drops = CounterMetricFamily("tunnelgate_dropped_packets", "Packets dropped, by reason", labels=["reason"])
        for k, v in sorted({**stats, **d.responder.stats}.items()):
            if k.startswith("drop_") or k in ("bad_mac", "replay", "malformed", "unknown_index", "stale_handshake"):
                drops.add_metric([k.removeprefix("drop_")], v)
        yield drops
        yield CounterMetricFamily("tunnelgate_handshakes", "Completed handshakes", value=stats.get("handshakes", 0))
        with d.elock:           # only the copy: the data path meters under this lock
            objects = d.engine.contract_list(history=True)
        contracts = [c.view(0.0) for c in objects]
        states = GaugeMetricFamily("tunnelgate_contracts", "Contracts by state (ended ones this run remembers)",
                                   labels=["state"])
        by_state: dict[str, int] = {}
        for c in contracts:
            by_state[c["state"]] = by_state.get(c["state"], 0) + 1
        for state, n in sorted(by_state.items()):
            states.add_metric([state], n)
        yield states
        revenue = CounterMetricFamily("tunnelgate_revenue_msat", "Paid contracts' value, per peer",
                                      labels=["peer", "address"])
        peer_bytes = CounterMetricFamily("tunnelgate_peer_bytes", "Metered bytes per peer and direction",
                                         labels=["peer", "address", "direction"])
        per_peer: dict[str, list[int]] = {}
        for c in contracts:
            acc = per_peer.setdefault(c["peer"], [0, 0, 0])
            acc[0] += c["cost_msat"] if c["paid"] else 0
            acc[1] += c["up"]
            acc[2] += c["down"]
        for peer_hex, (msat, up, down) in sorted(per_peer.items()):
            raw = bytes.fromhex(peer_hex) if peer_hex else b""
            key = base64.b64encode(raw).decode()
            addr = d.addr_of.get(raw)
            addr = str(ipaddress.IPv4Address(addr)) if addr else ""
            revenue.add_metric([key, addr], msat)
            peer_bytes.add_metric([key, addr, "up"], up)
            peer_bytes.add_metric([key, addr, "down"], down)
        yield revenue
        yield peer_bytes
        failures = sum(1 for e in d.events.recent if e["kind"] in ("payment_failed", "revoked"))
        yield CounterMetricFamily("tunnelgate_payment_failures", "Failed payments and revocations (recent)",
                                  value=failures)
        yield GaugeMetricFamily("tunnelgate_peers", "Peers with a session", value=len(d.responder.peers()))


def start(daemon, listen: tuple[str, int]):
    """Serves /metrics on listen; returns (server, thread) so the daemon can stop it."""
    from prometheus_client import start_http_server
    registry = CollectorRegistry()
    registry.register(GatewayCollector(daemon))
    return start_http_server(listen[1], addr=listen[0], registry=registry)
