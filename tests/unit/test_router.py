"""The router from destination to link (tunnelgate.router) with three links, as a
client buying from three gateways will have: the longest prefix wins, IPv4 and IPv6
apart, host routes first; routes come and go while lookups see a consistent table;
and the link table (daemon/links.py) keeps a link's routes with the link."""

from __future__ import annotations

import ipaddress

from tunnelgate.daemon.links import BuyerLink, Links, SellerLink
from tunnelgate.router import Router

A, B, C = "gw-a", "gw-b", "gw-c"


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def three() -> Router:
    r = Router()
    r.add("0.0.0.0/0", A)               # the default: what no other gateway sold
    r.add("198.18.0.0/15", B)
    r.add("198.18.2.0/24", C)
    r.add("198.18.2.7/32", A)           # one host carved out of C's /24
    r.add("::/0", A)
    r.add("2001:2::/32", B)
    r.add("2001:2:0:2::/64", C)
    return r


def test_the_longest_prefix_wins_among_three_links():
    r = three()
    assert r.lookup(ip("1.1.1.1")) == A
    assert r.lookup(ip("198.19.0.1")) == B
    assert r.lookup(ip("198.18.2.2")) == C
    assert r.lookup(ip("198.18.2.7")) == A
    assert r.lookup(ip("198.18.3.1")) == B
    assert r.lookup(ip("2001:2:0:2::2")) == C
    assert r.lookup(ip("2001:2:0:3::2")) == B
    assert r.lookup(ip("2001:db8::1")) == A
    assert len(r) == 7


def test_ipv4_and_ipv6_routes_are_apart_and_a_miss_is_none():
    r = Router()
    r.add("10.0.0.0/8", B)
    r.add(ipaddress.ip_network("fd00::/8"), C)
    assert r.lookup(ip("10.1.2.3")) == B and r.lookup(ip("fd00::1")) == C
    assert r.lookup(ip("11.0.0.1")) is None
    assert r.lookup(ip("fe80::1")) is None
    # the IPv4-mapped form of 10.1.2.3 is an IPv6 address: no IPv4 route covers it
    assert r.lookup(ip("::ffff:10.1.2.3")) is None
    assert r.lookup(b"\x0a\x01") is None                # neither length


def test_removing_a_route_falls_back_to_the_next_longest():
    r = three()
    assert r.remove("198.18.2.0/24") == C
    assert r.lookup(ip("198.18.2.2")) == B
    assert r.remove("198.18.2.0/24") is None
    assert r.remove("198.18.0.0/15") == B
    assert r.lookup(ip("198.18.2.2")) == A
    assert r.lookup(ip("198.18.2.7")) == A             # the host route stays
    r.add("198.18.2.0/24", C)                          # a length that was emptied comes back
    assert r.lookup(ip("198.18.2.2")) == C


def test_a_prefix_added_again_goes_to_its_new_link_and_host_bits_are_ignored():
    r = three()
    r.add("198.18.2.99/24", B)                         # the same /24, written with host bits
    assert r.lookup(ip("198.18.2.2")) == B
    assert len(r) == 7


def test_remove_link_drops_all_its_routes_and_only_them():
    r = three()
    assert r.remove_link(A) == 3
    assert r.lookup(ip("1.1.1.1")) is None
    assert r.lookup(ip("198.18.2.7")) == C
    assert r.lookup(ip("2001:db8::1")) is None
    assert sorted(str(p) for p, _ in r.routes()) == sorted(
        ["198.18.0.0/15", "198.18.2.0/24", "2001:2::/32", "2001:2:0:2::/64"])


def test_routes_lists_every_prefix_with_its_link():
    got = {(str(p), link) for p, link in three().routes()}
    assert got == {("0.0.0.0/0", A), ("198.18.0.0/15", B), ("198.18.2.0/24", C), ("198.18.2.7/32", A),
                   ("::/0", A), ("2001:2::/32", B), ("2001:2:0:2::/64", C)}


def test_the_link_table_routes_each_destination_to_the_seller_of_it():
    links = Links()
    a, b, c = (SellerLink(bytes([n]) * 32, None, ("198.18.0.1", 51900 + n)) for n in range(3))
    links.add(a, ["0.0.0.0/0", "::/0"])
    links.add(b, ["198.18.2.0/24"])
    links.add(c, ["198.18.2.128/25", "2001:2::/32"])
    route = links.router.lookup
    assert (route(ip("9.9.9.9")), route(ip("198.18.2.1")), route(ip("198.18.2.200"))) == (a, b, c)
    assert route(ip("2001:2::1")) is c
    # c is replaced (a new handshake): its old routes go with it
    c2 = SellerLink(c.peer, None, c.endpoint)
    links.add(c2, ["198.18.2.192/26"])
    assert route(ip("198.18.2.130")) is b and route(ip("198.18.2.200")) is c2
    assert route(ip("2001:2::1")) is a
    assert links.remove(b.peer) is b
    assert route(ip("198.18.2.1")) is a and len(links) == 2


def test_a_buyers_tunnel_addresses_are_its_host_routes():
    links = Links()
    p, q = BuyerLink(b"p" * 32, None, ip("100.64.0.2"), ip("fd64::2")), BuyerLink(b"q" * 32, None, ip("100.64.0.3"))
    links.add(p)
    links.add(q)
    links.set_chunks(q, True)
    assert links.router.lookup(ip("100.64.0.2")) is p and links.router.lookup(ip("fd64::2")) is p
    assert links.router.lookup(ip("100.64.0.3")) is q and links.chunky == {q.peer}
    links.remove(q.peer)
    assert links.router.lookup(ip("100.64.0.3")) is None and not links.chunky
