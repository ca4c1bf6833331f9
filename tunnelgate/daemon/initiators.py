"""The client's receiver when it has several gateways: each datagram to the Initiator
of the gateway that sent it.

A UDP GRO group holds datagrams from one source address, so dispatch is per group:
by the source (the gateway's endpoint), and for a source not known (a gateway that
moved, before its link's endpoint follows) by the receiver index in the transport
header of the group's first datagram, which each Initiator chose itself.

The hot path is a bulk transfer from one gateway: every group of a batch from the
source the previous batch came from. The link found last and that source are cached,
so such a batch goes to its session in one call after one tuple comparison per group
and one dict lookup (the cached link is still the one `Links` holds for its gateway:
a replaced link is never used). Measured against the bare Initiator of a one-gateway
client (tglab/receiver_cost.py): the walk over the links for every batch cost 3 % per
datagram; the cache brings it within noise. Consecutive groups of one gateway are
opened in one call on the general path too. A client with exactly one gateway and no
discovery uses the bare Initiator instead.
"""

from __future__ import annotations

from ..wire import INDEX as _INDEX


class Initiators:
    __slots__ = ("links", "source", "stats", "_last", "_last_addr")

    def __init__(self, links) -> None:
        self.links = links          # daemon.links.Links of SellerLinks
        self.source = None          # where the latest opened group came from
        self.stats = {"unknown_source": 0}
        self._last = None           # the link of the latest group dispatched ...
        self._last_addr = None      # ... and the source address it came from

    def _find(self, addr, buf):
        ep = addr[:2]
        links = self.links.by_peer.values()
        for link in links:
            if link.endpoint == ep:
                return link
        if len(buf) >= 8:
            index = _INDEX.unpack_from(buf, 4)[0]
            for link in links:
                if link.session.owns(index):
                    return link
        return None

    def receive_groups(self, groups, now: float, resp_lock=None) -> list:
        last, addr = self._last, self._last_addr
        if last is not None and self.links.by_peer.get(last.peer) is last:
            for group in groups:
                if group[2] != addr:
                    break
            else:       # all from the gateway of the previous batch
                session = last.session
                out = session.receive_groups(groups, now, resp_lock)
                self.source = session.source
                return out
        return self._dispatch(groups, now, resp_lock)

    def _dispatch(self, groups, now: float, resp_lock) -> list:
        out = []
        run: list = []
        cur = cur_addr = None
        for group in groups:
            addr = group[2]
            link = cur if cur is not None and addr == cur_addr else self._find(addr, group[0])
            if link is None:
                self.stats["unknown_source"] += 1
                continue
            if link is not cur and run:
                out.extend(cur.session.receive_groups(run, now, resp_lock))
                self.source = cur.session.source
                run = []
            cur, cur_addr = link, addr
            run.append(group)
        if run:
            out.extend(cur.session.receive_groups(run, now, resp_lock))
            self.source = cur.session.source
        if cur is not None:
            self._last, self._last_addr = cur, cur_addr
        return out
