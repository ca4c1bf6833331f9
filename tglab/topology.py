"""Lab topologies as data: which namespaces, which links between them, which
addresses and routes. Lab (lab.py) builds whatever a Topology describes, so a
new shape (several gateways on one link, a chain of gateways) is a new
instance here, not new code in Lab.

Today's shape, THREE_NAMESPACES:

    client "veth0" 198.18.1.2/24 ── gw "veth-c" 198.18.1.1/24
           2001:2:0:1::2/64 ──          2001:2:0:1::1/64
                                    gw "veth-up" 198.18.2.1/24 ── up "veth0" 198.18.2.2/24
                                             2001:2:0:2::1/64 ──         2001:2:0:2::2/64

plus STRANGER, an optional node on the client-gateway link (Lab.add_stranger()).
Addresses are from the benchmarking ranges 198.18.0.0/15 and 2001:2::/48, so
nothing here can reach a real network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CLIENT_LINK = "198.18.1.2"
STRANGER_LINK = "198.18.1.3"   # Lab.add_stranger(): a neighbour on the client-gateway link
GW_LINK = "198.18.1.1"
GW_UP = "198.18.2.1"
UPSTREAM = "198.18.2.2"
PREFIXLEN = 24
CLIENT_LINK6 = "2001:2:0:1::2"
GW_LINK6 = "2001:2:0:1::1"
GW_UP6 = "2001:2:0:2::1"
UPSTREAM6 = "2001:2:0:2::2"
PREFIXLEN6 = 64
# interface names inside the namespaces
CLIENT_IF = "veth0"        # in client
GW_CLIENT_IF = "veth-c"    # in gw, towards the client
GW_UP_IF = "veth-up"       # in gw, towards upstream
UP_IF = "veth0"            # in up
STRANGER_IF = "veth0"      # in stranger (a macvlan on the client's veth0)

# a role names the namespace PREFIX-ROLE and the Lab attribute lab.ROLE
_ROLE_RE = re.compile(r"^[a-z][a-z0-9_]{0,15}$")


@dataclass(frozen=True)
class Port:
    """One interface of a node on a link, with its addresses (None: none)."""
    node: str
    dev: str
    addr: str | None = None
    addr6: str | None = None


@dataclass(frozen=True)
class Link:
    """kind "veth": a pair between ports[0] and ports[1], created directly in
    their namespaces. kind "macvlan": ports[0] is an existing interface and
    each further port a macvlan (bridge mode) on it, moved into its own node,
    so the nodes share that link as on one switch. kind "bridge": a Linux
    bridge in node ``hub`` (a switch: no addresses, no routes) and one veth
    from each port to it; multicast (mDNS) crosses it as on a real LAN."""
    ports: tuple[Port, ...]
    kind: str = "veth"
    prefixlen: int = PREFIXLEN
    prefixlen6: int = PREFIXLEN6
    hub: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "veth" and len(self.ports) != 2:
            raise ValueError(f"a veth link has two ports, not {len(self.ports)}")
        if self.kind == "macvlan" and len(self.ports) < 2:
            raise ValueError("a macvlan link needs its parent port and at least one more")
        if self.kind == "bridge" and (self.hub is None or len(self.ports) < 2):
            raise ValueError("a bridge link needs a hub node and at least two ports")
        if self.kind not in ("veth", "macvlan", "bridge"):
            raise ValueError(f"link kind {self.kind!r}: veth, macvlan or bridge")


@dataclass(frozen=True)
class Route:
    dst: str            # "default" or a prefix
    via: str            # an IPv4 or IPv6 next hop (the family follows it)


@dataclass(frozen=True)
class Node:
    """A network namespace. forwarding stays off in every node: a gateway
    daemon turns it on, and a test proving it does needs it off before."""
    role: str
    routes: tuple[Route, ...] = ()

    def __post_init__(self) -> None:
        if not _ROLE_RE.match(self.role):
            raise ValueError(f"bad role {self.role!r}: 1-16 characters of [a-z0-9_], a letter first")


@dataclass(frozen=True)
class Extra:
    """A node a lab adds on demand (Lab.add()), with the links that join it."""
    node: Node
    links: tuple[Link, ...]


@dataclass(frozen=True)
class Topology:
    nodes: tuple[Node, ...]
    links: tuple[Link, ...]
    extras: tuple[Extra, ...] = ()

    def __post_init__(self) -> None:
        roles = self.roles()
        if len(set(roles)) != len(roles):
            raise ValueError(f"roles repeat: {roles}")
        for links, known in ((self.links, {n.role for n in self.nodes}),) + tuple(
                (x.links, {n.role for n in self.nodes} | {x.node.role}) for x in self.extras):
            for link in links:
                for p in link.ports:
                    if p.node not in known:
                        raise ValueError(f"link port {p.dev} on {p.node!r}: no such node")
                if link.hub is not None and link.hub not in known:
                    raise ValueError(f"bridge hub {link.hub!r}: no such node")

    def roles(self) -> tuple[str, ...]:
        """Every role, the extras' too."""
        return tuple(n.role for n in self.nodes) + tuple(x.node.role for x in self.extras)

    def extra(self, role: str) -> Extra:
        for x in self.extras:
            if x.node.role == role:
                return x
        raise KeyError(f"no optional node {role!r} (have {[x.node.role for x in self.extras]})")


# client: default route via the gateway. gw: default route via up (IPv4 and
# IPv6). up: only its connected prefixes, NO route to the client's link nor
# 100.64.0.0/10, so it answers only traffic masqueraded by the gateway: a
# client reaching UPSTREAM proves its traffic went through the tunnel. The
# client has no IPv6 route but a dual-stack tunnel's, so a client reaching
# UPSTREAM6 went through the tunnel too (or through a route the bench's raw
# row adds via GW_LINK6).
STRANGER = Extra(
    Node("stranger", routes=(Route("default", GW_LINK),)),
    (Link((Port("client", CLIENT_IF), Port("stranger", STRANGER_IF, STRANGER_LINK)), kind="macvlan"),))

THREE_NAMESPACES = Topology(
    nodes=(Node("client", routes=(Route("default", GW_LINK),)),
           Node("gw", routes=(Route("default", UPSTREAM), Route("default", UPSTREAM6))),
           Node("up")),
    links=(Link((Port("client", CLIENT_IF, CLIENT_LINK, CLIENT_LINK6), Port("gw", GW_CLIENT_IF, GW_LINK, GW_LINK6))),
           Link((Port("gw", GW_UP_IF, GW_UP, GW_UP6), Port("up", UP_IF, UPSTREAM, UPSTREAM6)))),
    extras=(STRANGER,))


def market(gateways: int = 3) -> Topology:
    """One client and N gateways on one LAN (a bridge in node "lan"), each gateway
    with its own uplink to one upstream host:

        client 198.18.1.2 ─┐            gwI "veth-up" 198.18.(20+I).1/24 ── up "vethI" 198.18.(20+I).2
        gwI "veth-c" 198.18.1.(10+I) ─┴─ lan (bridge)       (I = 1..N; IPv6 2001:2:0:(20+I)::1/2)

    (IPv6 on the LAN 2001:2:0:1::2 and 2001:2:0:1::(10+I)). up has only its connected
    prefixes, like THREE_NAMESPACES: it answers only what a gateway masqueraded."""
    if not 1 <= gateways <= 9:
        raise ValueError("1 to 9 gateways")
    gws = [f"gw{i}" for i in range(1, gateways + 1)]
    lan = Link((Port("client", CLIENT_IF, CLIENT_LINK, CLIENT_LINK6),)
               + tuple(Port(g, GW_CLIENT_IF, f"198.18.1.{10 + i}", f"2001:2:0:1::{10 + i:x}")
                       for i, g in enumerate(gws, 1)), kind="bridge", hub="lan")
    ups = tuple(Link((Port(g, GW_UP_IF, f"198.18.{20 + i}.1", f"2001:2:0:{20 + i:x}::1"),
                      Port("up", f"veth{i}", f"198.18.{20 + i}.2", f"2001:2:0:{20 + i:x}::2")))
                for i, g in enumerate(gws, 1))
    nodes = (Node("client"), Node("lan")) + tuple(
        Node(g, routes=(Route("default", f"198.18.{20 + i}.2"), Route("default", f"2001:2:0:{20 + i:x}::2")))
        for i, g in enumerate(gws, 1)) + (Node("up"),)
    return Topology(nodes=nodes, links=(lan,) + ups)


def market_gateway(i: int) -> dict[str, str]:
    """Addresses of gateway I (1-based) in market(): its LAN address and uplink."""
    return {"link": f"198.18.1.{10 + i}", "link6": f"2001:2:0:1::{10 + i:x}",
            "up": f"198.18.{20 + i}.1", "upstream": f"198.18.{20 + i}.2",
            "upstream6": f"2001:2:0:{20 + i:x}::2"}


SPARE = {"link": "198.18.3.1", "client": "198.18.3.2", "up": "198.18.4.1", "upstream": "198.18.4.2",
         "tunnel": "100.64.9.1/24"}


ALT = {"link": "198.18.5.2", "relay": "198.18.5.1", "up": "198.18.6.1", "upstream": "198.18.6.2",
       "tunnel": "100.64.8.1/24"}


def chain(relays: int = 1, spare: bool = False, alt: bool = False) -> Topology:
    """A chain of relays (docs/relay.md): client ── relayN ── … ── relay1 ── gw ── up, each a
    veth link of its own:

        client "veth0" 198.18.1.2 ── relayN "veth-c" 198.18.1.1
        relayI "veth-up" 198.18.(10+I).1 ── next "veth-c" 198.18.(10+I).2   (next: relayI-1, or gw)
        gw "veth-up" 198.18.2.1 ── up "veth0" 198.18.2.2

    Only gw has a route to up (default via it); a relay reaches up only through its upstream
    tunnel and the client only through its tunnel to relayN, so a reply from up proves the
    packets went through every hop.

    spare: a second gateway "gw2" the client reaches directly (its other seller, for
    failover), with its own uplink (addresses in SPARE):

        client "veth1" 198.18.3.2 ── gw2 "veth-c" 198.18.3.1
        gw2 "veth-up" 198.18.4.1 ── up "veth1" 198.18.4.2

    alt: a second upstream gateway "gwalt" for relay1 (its own market of upstreams), with
    its own uplink (addresses in ALT):

        relay1 "veth-alt" 198.18.5.1 ── gwalt "veth-c" 198.18.5.2
        gwalt "veth-up" 198.18.6.1 ── up "veth2" 198.18.6.2"""
    if not 1 <= relays <= 3:
        raise ValueError("1 to 3 relays")
    names = [f"relay{i}" for i in range(relays, 0, -1)] + ["gw"]
    links = [Link((Port("client", CLIENT_IF, CLIENT_LINK), Port(names[0], GW_CLIENT_IF, GW_LINK)))]
    for i in range(relays, 0, -1):
        me, nxt = f"relay{i}", names[relays - i + 1]
        links.append(Link((Port(me, GW_UP_IF, f"198.18.{10 + i}.1"), Port(nxt, GW_CLIENT_IF, f"198.18.{10 + i}.2"))))
    links.append(Link((Port("gw", GW_UP_IF, GW_UP, GW_UP6), Port("up", UP_IF, UPSTREAM, UPSTREAM6))))
    nodes = (Node("client"),) + tuple(Node(n) for n in names[:-1]) + (
        Node("gw", routes=(Route("default", UPSTREAM), Route("default", UPSTREAM6))),)
    if spare:
        links += [Link((Port("client", "veth1", SPARE["client"]), Port("gw2", GW_CLIENT_IF, SPARE["link"]))),
                  Link((Port("gw2", GW_UP_IF, SPARE["up"]), Port("up", "veth1", SPARE["upstream"])))]
        nodes += (Node("gw2", routes=(Route("default", SPARE["upstream"]),)),)
    if alt:
        links += [Link((Port("relay1", "veth-alt", ALT["relay"]), Port("gwalt", GW_CLIENT_IF, ALT["link"]))),
                  Link((Port("gwalt", GW_UP_IF, ALT["up"]), Port("up", "veth2", ALT["upstream"])))]
        nodes += (Node("gwalt", routes=(Route("default", ALT["upstream"]),)),)
    return Topology(nodes=nodes + (Node("up"),), links=tuple(links))


def chain_hop(i: int, relays: int) -> dict[str, str]:
    """Addresses of hop I in chain(relays) (I = 1..relays a relay, 1 next to gw; 0 gw): where
    its buyers reach it, where it buys (a relay's upstream endpoint), its tunnel address."""
    return {"link": GW_LINK if i == relays else f"198.18.{11 + i}.2",
            "upstream": f"198.18.{10 + i}.2" if i else UPSTREAM, "tunnel": f"100.64.{i}.1/24"}
