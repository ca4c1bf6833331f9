"""Destination address -> link, longest prefix first (what wireguard-go's
allowedips does with a trie, here with one dict per prefix length).

A client routes each destination to the link (gateway session) that sold it;
a gateway routes each peer's tunnel addresses (/32, /128) to that peer's
link. Full-length prefixes sit in `hosts`, one dict lookup, so a gateway's
per-burst lookup costs what its address -> peer dict did; shorter ones are
tried longest first, one dict lookup per prefix length present.

Readers do not lock: the data-path threads look up while the control thread
adds and removes. A dict read concurrent with a write is safe under the GIL,
and the tuple of prefix lengths is replaced whole, after its table is filled.
"""

from __future__ import annotations

import ipaddress

_BITS = {4: 32, 16: 128}


class Router:
    __slots__ = ("hosts", "_nets", "_lens")

    def __init__(self) -> None:
        self.hosts: dict[bytes, object] = {}       # address bytes -> link, for /32 and /128
        # address length (4, 16) -> prefix length -> network (int, host bits shifted out) -> link
        self._nets: dict[int, dict[int, dict[int, object]]] = {4: {}, 16: {}}
        self._lens: dict[int, tuple[int, ...]] = {4: (), 16: ()}   # longest first

    @staticmethod
    def _parse(prefix) -> tuple[int, int, int]:
        """(address length in bytes, prefix length, network as int >> host bits)."""
        net = prefix if isinstance(prefix, (ipaddress.IPv4Network, ipaddress.IPv6Network)) \
            else ipaddress.ip_network(prefix, strict=False)
        size = 4 if net.version == 4 else 16
        return size, net.prefixlen, int(net.network_address) >> (_BITS[size] - net.prefixlen)

    def add(self, prefix, link) -> None:
        """Route `prefix` ("10.0.0.0/8", an ip_network) to `link`, replacing any link it had."""
        size, plen, key = self._parse(prefix)
        if plen == _BITS[size]:
            self.hosts[key.to_bytes(size, "big")] = link
            return
        table = self._nets[size].setdefault(plen, {})
        table[key] = link
        if plen not in self._lens[size]:
            self._lens[size] = tuple(sorted((*self._lens[size], plen), reverse=True))

    def remove(self, prefix) -> object | None:
        """Drop the route of exactly `prefix`; the link it went to, or None."""
        size, plen, key = self._parse(prefix)
        if plen == _BITS[size]:
            return self.hosts.pop(key.to_bytes(size, "big"), None)
        table = self._nets[size].get(plen)
        if table is None:
            return None
        link = table.pop(key, None)
        if not table:
            # the empty table stays: a reader may still hold the old tuple of lengths
            self._lens[size] = tuple(n for n in self._lens[size] if n != plen)
        return link

    def remove_link(self, link) -> int:
        """Drop every route to `link`; how many there were."""
        dropped = [prefix for prefix, to in self.routes() if to is link]
        for prefix in dropped:
            self.remove(prefix)
        return len(dropped)

    def lookup(self, addr: bytes):
        """The link of the longest prefix holding `addr` (4 or 16 bytes), or None."""
        link = self.hosts.get(addr)
        if link is not None:
            return link
        size = len(addr)
        lens = self._lens.get(size)
        if not lens:
            return None
        n = int.from_bytes(addr, "big")
        bits = _BITS[size]
        nets = self._nets[size]
        for plen in lens:
            link = nets[plen].get(n >> (bits - plen))
            if link is not None:
                return link
        return None

    def routes(self) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, object]]:
        """Every (prefix, link), longest prefixes first."""
        out = [(ipaddress.ip_network(ipaddress.ip_address(a)), link) for a, link in list(self.hosts.items())]
        for size in (4, 16):
            bits = _BITS[size]
            for plen in self._lens[size]:
                for key, link in list(self._nets[size][plen].items()):
                    addr = ipaddress.ip_address((key << (bits - plen)).to_bytes(size, "big"))
                    out.append((ipaddress.ip_network(f"{addr}/{plen}"), link))
        return out

    def __len__(self) -> int:
        return len(self.hosts) + sum(len(t) for nets in self._nets.values() for t in nets.values())
