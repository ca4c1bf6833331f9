"""Topologies are data (tglab/topology.py): the lab's shape today is one
instance, and a description that cannot be built is refused before any
namespace exists."""

from __future__ import annotations

import pytest

from tglab.topology import (CLIENT_LINK, GW_LINK, STRANGER, THREE_NAMESPACES, UPSTREAM, UPSTREAM6, Extra, Link,
                            Node, Port, Route, Topology)


def test_the_three_namespaces_and_the_stranger():
    t = THREE_NAMESPACES
    assert t.roles() == ("client", "gw", "up", "stranger")
    assert t.extra("stranger") is STRANGER and STRANGER.links[0].kind == "macvlan"
    ends = [{(p.node, p.addr) for p in link.ports} for link in t.links]
    assert ends[0] == {("client", CLIENT_LINK), ("gw", GW_LINK)} and ("up", UPSTREAM) in ends[1]
    up = next(n for n in t.nodes if n.role == "up")
    assert up.routes == ()      # up answers only what the gateway masquerades
    gw = next(n for n in t.nodes if n.role == "gw")
    assert Route("default", UPSTREAM6) in gw.routes


@pytest.mark.parametrize("make, msg", [
    (lambda: Link((Port("a", "x"),)), "two ports"),
    (lambda: Link((Port("a", "x"), Port("b", "y"), Port("c", "z"))), "two ports"),
    (lambda: Link((Port("a", "x"),), kind="macvlan"), "parent port"),
    (lambda: Link((Port("a", "x"), Port("b", "y")), kind="hub"), "veth, macvlan or bridge"),
    (lambda: Link((Port("a", "x"), Port("b", "y")), kind="bridge"), "needs a hub"),
    (lambda: Topology((Node("a"), Node("b")), (Link((Port("a", "x"), Port("b", "y")), kind="bridge", hub="h"),)),
     "no such node"),
    (lambda: Node("Gw-1"), "bad role"),
    (lambda: Topology((Node("a"), Node("a")), ()), "roles repeat"),
    (lambda: Topology((Node("a"),), (Link((Port("a", "x"), Port("b", "y"))),)), "no such node"),
    (lambda: Topology((Node("a"),), (), (Extra(Node("b"), (Link((Port("a", "x"), Port("c", "y")), kind="macvlan"),)),)),
     "no such node"),
])
def test_a_topology_that_cannot_be_built_is_refused(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


def test_an_extra_may_link_to_the_base_nodes_and_itself():
    t = Topology((Node("a"),), (), (Extra(Node("b"), (Link((Port("a", "x"), Port("b", "y")), kind="macvlan"),)),))
    assert t.roles() == ("a", "b")
    with pytest.raises(KeyError, match="no optional node 'c'"):
        t.extra("c")


def test_market_topology_shape():
    from tglab.topology import market, market_gateway
    t = market(3)
    assert t.roles() == ("client", "lan", "gw1", "gw2", "gw3", "up")
    lan = t.links[0]
    assert lan.kind == "bridge" and lan.hub == "lan" and len(lan.ports) == 4
    addrs = [p.addr for link in t.links for p in link.ports]
    assert len(addrs) == len(set(addrs))
    assert market_gateway(2)["link"] == "198.18.1.12" and market_gateway(2)["upstream"] == "198.18.22.2"
