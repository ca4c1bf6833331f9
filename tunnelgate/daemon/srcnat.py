"""A client's source translation per gateway: the TUN has the tunnel address the first
gateway leased (the primary's); a gateway that leased another carries all the same,
the packets of its destinations leaving with that address (net/nft.srcnat_ruleset:
stateless rewrites in the client's own nft table, answers translated back before
conntrack). Recomputed on the control thread's tick only when the choice moved a
destination or a gateway's address changed; applied one change at a time, through
the daemon's network task chain.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("tunnelgate.client")

RETRY_S = 5.0        # a failed change is tried again after this


class SourceNat:
    """`apply(own, routes)`: a coroutine that installs the table (empty routes: removes
    it); `spawn(coro)`: runs it after the network changes before it."""

    def __init__(self, links, market, tun: str, apply, spawn) -> None:
        self.links, self.market, self.tun = links, market, tun
        self.apply, self.spawn = apply, spawn
        self.scheduled: tuple | None = None      # (own, routes) last scheduled
        self.seen: tuple | None = None           # (moves, addresses) it was computed for
        self.failed: float | None = None

    def wanted(self, prim) -> tuple | None:
        """(own addresses, ((destination, the address its gateway leased us), ...)), host
        destinations before the defaults; routes empty when all are the TUN's own."""
        if prim is None or prim.address is None:
            return None
        own = (prim.address.split("/")[0],) + ((prim.address6.split("/")[0],) if prim.address6 else ())
        hosts, defaults = [], []
        for dest, key in self.market.chooser.current.items():
            link = self.links.get(key) if key is not None else None
            v6 = ":" in dest
            addr = None if link is None else link.address6 if v6 else link.address
            if addr is None or (v6 and prim.address6 is None):
                continue
            (defaults if dest.endswith("/0") else hosts).append((dest, addr.split("/")[0]))
        routes = tuple(sorted(hosts)) + tuple(sorted(defaults))
        return own, routes if any(ip not in own for _, ip in routes) else ()

    def tick(self, now: float, prim) -> None:
        """prim: the link whose lease the TUN has (None before the first handshake)."""
        seen = (self.market.moves, prim.address if prim else None,
                tuple((link.address, link.address6) for link in self.links.by_peer.values()))
        if seen == self.seen or (self.failed is not None and now - self.failed < RETRY_S):
            return                  # nothing moved, no address changed: no walk over destinations
        wanted = self.wanted(prim)
        if wanted is None:
            return
        self.seen = seen
        if wanted == self.scheduled:
            return
        self.scheduled = wanted
        own, routes = wanted

        async def run():
            try:
                await self.apply(list(own), list(routes))
                self.failed = None
            except Exception as e:
                self.scheduled, self.seen, self.failed = None, None, time.monotonic()
                log.error("cannot set the source translation for gateways with other tunnel addresses "
                          "(%s); check that nftables is installed and the kernel has nf_tables; trying again "
                          "in %g s", e, RETRY_S)
        self.spawn(run())
