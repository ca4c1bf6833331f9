"""The client's receiver when it has several gateways: each datagram to the Initiator
of the gateway that sent it.

A UDP GRO group holds datagrams from one source address, so dispatch is per group:
by the source (the gateway's endpoint, one dict lookup), and for a source not known
(a gateway that moved, before its link's endpoint follows) by the receiver index in
the transport header of the group's first datagram, which each Initiator chose itself.
Consecutive groups of one gateway are opened in one call, so a bulk transfer from one
gateway costs what the single-gateway receiver costs, plus a lookup per batch run.
A client with exactly one gateway and no discovery uses the bare Initiator instead.
"""

from __future__ import annotations

from ..wire import INDEX as _INDEX


class Initiators:
    __slots__ = ("links", "source", "stats")

    def __init__(self, links) -> None:
        self.links = links          # daemon.links.Links of SellerLinks
        self.source = None          # where the latest opened group came from
        self.stats = {"unknown_source": 0}

    def _find(self, addr, buf):
        ep = addr[:2]
        for link in self.links:
            if link.endpoint == ep:
                return link
        if len(buf) >= 8:
            index = _INDEX.unpack_from(buf, 4)[0]
            for link in self.links:
                if link.session.owns(index):
                    return link
        return None

    def receive_groups(self, groups, now: float, resp_lock=None) -> list:
        out = []
        run: list = []
        cur = None
        for group in groups:
            link = cur if cur is not None and group[2][:2] == cur.endpoint else self._find(group[2], group[0])
            if link is None:
                self.stats["unknown_source"] += 1
                continue
            if link is not cur and run:
                out.extend(cur.session.receive_groups(run, now, resp_lock))
                self.source = cur.session.source
                run = []
            cur = link
            run.append(group)
        if run:
            out.extend(cur.session.receive_groups(run, now, resp_lock))
            self.source = cur.session.source
        return out
