"""The data plane's counterparts: one link per counterpart, and the table that
finds them by key and by destination.

A link holds what the forwarding threads need of one counterpart: its
session, where it is (endpoint), what it takes beyond the plain format
(features), and its control channel. Two kinds, by which side of a sale the
counterpart is on:

- SellerLink: a gateway this node buys from (the client's link). Its session
  is an Initiator of its own; the router sends it the destinations it sold.
- BuyerLink: a peer this node sells to (the gateway's links). Its session
  lives in the gateway's one Responder, keyed by the peer's public key (the
  Responder finds the peer of a datagram by its key index); the router holds
  the tunnel addresses given to it, so a packet from the TUN finds its peer
  by destination (what `peer_of` was).

The table is written by the control side (handshakes, set-up) while the
forwarding threads read it without a lock: plain dict writes and reads (see
tunnelgate.router).
"""

from __future__ import annotations

import ipaddress

from ..router import Router


class SellerLink:
    """A gateway this node buys from: an Initiator session, the endpoint we send to
    (the configured one, then wherever its authenticated datagrams come from), and
    what its handshake said (features, the tunnel addresses it gave us)."""

    __slots__ = ("peer", "session", "endpoint", "features", "chunks", "channel", "address", "address6")

    def __init__(self, peer: bytes, session, endpoint: tuple, channel=None) -> None:
        self.peer = peer                    # the gateway's public key
        self.session = session              # session.Initiator
        self.endpoint = endpoint            # (host, port) datagrams go to
        self.features: frozenset[str] = frozenset()     # it announced, and we take too
        self.chunks = False                 # it takes DATA_CHUNK records (a TSO burst in one go)
        self.channel = channel              # protocol.channel.Channel: contracts with it
        self.address: str | None = None     # ours in its tunnel ("100.64.0.2/10"), from its handshake
        self.address6: str | None = None    # dual-stack gateways give an IPv6 address too


class BuyerLink:
    """A peer this node sells to: its key, the tunnel addresses given to it (4 and
    16 bytes; the source it must use, the destination that reaches it), whether it
    takes chunk records, its control channel. Its session is the peer's entry in
    the gateway's Responder, whose endpoint follows the peer's datagrams."""

    __slots__ = ("peer", "session", "address", "address6", "chunks", "channel")

    def __init__(self, peer: bytes, session, address: bytes, address6: bytes | None = None,
                 channel=None) -> None:
        self.peer = peer
        self.session = session              # session.Responder (all peers'; this one by key)
        self.address = address
        self.address6 = address6
        self.chunks = False
        self.channel = channel

    @property
    def endpoint(self):
        return self.session.endpoint(self.peer)


class Links:
    """The links by counterpart key, and the router from destination to link."""

    __slots__ = ("by_peer", "router", "chunky")

    def __init__(self) -> None:
        self.by_peer: dict[bytes, SellerLink | BuyerLink] = {}
        self.router = Router()
        # the keys of links that take chunk records: while it is empty, TUN bursts are
        # cut into plain segments at once (datapath._frames_to_bursts)
        self.chunky: set[bytes] = set()

    def add(self, link, prefixes=()) -> None:
        """(Re)place the link of link.peer, routing `prefixes` to it; a buyer's tunnel
        addresses are routed to it too. The routes of a link it replaces are dropped."""
        old = self.by_peer.get(link.peer)
        if old is not None:
            self._unroute(old)
        self.by_peer[link.peer] = link
        if link.chunks:
            self.chunky.add(link.peer)
        else:
            self.chunky.discard(link.peer)
        for prefix in prefixes:
            self.router.add(prefix, link)
        if isinstance(link, BuyerLink):
            for addr in (link.address, link.address6):
                if addr is not None:
                    self.router.add(ipaddress.ip_network(ipaddress.ip_address(addr)), link)

    def remove(self, peer: bytes):
        """Drop the link of `peer` and its routes; the link, or None."""
        link = self.by_peer.pop(peer, None)
        self.chunky.discard(peer)
        if link is not None:
            self._unroute(link)
        return link

    def set_chunks(self, link, chunks: bool) -> None:
        """What link's handshake said about chunk records."""
        link.chunks = chunks
        if chunks:
            self.chunky.add(link.peer)
        else:
            self.chunky.discard(link.peer)

    def _unroute(self, link) -> None:
        if isinstance(link, BuyerLink):
            # its host routes only: no walk over every peer's (a handshake does this)
            hosts = self.router.hosts
            for addr in (link.address, link.address6):
                if addr is not None and hosts.get(addr) is link:
                    del hosts[addr]
        else:
            self.router.remove_link(link)

    def get(self, peer: bytes):
        return self.by_peer.get(peer)

    def __iter__(self):
        return iter(list(self.by_peer.values()))

    def __len__(self) -> int:
        return len(self.by_peer)
