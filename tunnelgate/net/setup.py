"""Crash-safe network setup for the daemons.

Before each change, the change is appended to a JSON record (written
atomically to the path the caller gives, e.g. ``state_dir/net.json``); then it
is applied. ``teardown(record)`` undoes exactly what the record lists, in
reverse order, tolerating things that are already gone, then deletes the
record. A daemon calls ``teardown`` at start (to clean what a dead instance
left) and at stop.

Things that already existed before we touched them (an address already on the
interface, a route identical to one we want) are not recorded, so teardown
never removes what it did not add.

Everything acts on the caller's network namespace.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import tempfile
from pathlib import Path

from . import nft, routes
from .nft import NetError

__all__ = ["NetError", "setup_gateway", "setup_client_tun", "setup_client_routes", "setup_kill_switch",
           "connected_networks", "teardown", "read_record", "split_routes"]

log = logging.getLogger(__name__)
RECORD_VERSION = 1


# -- the record -------------------------------------------------------------------

def read_record(record_path) -> dict:
    """The record as a dict ({'version', 'pid', 'items': [...]}); empty if none."""
    path = Path(record_path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"version": RECORD_VERSION, "pid": os.getpid(), "items": []}
    except (OSError, ValueError) as exc:
        raise NetError(f"network record {path} unreadable ({exc}): inspect it, undo what it "
                       f"lists by hand (ip addr/route, nft list ruleset), then delete it") from exc
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise NetError(f"network record {path} is not a tunnelgate record: delete it after "
                       f"checking ip addr/route and nft list ruleset")
    return data


def _write_record(record_path, record: dict) -> None:
    path = Path(record_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record["pid"] = os.getpid()
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _key(item: dict) -> tuple:
    k = item["kind"]
    if k == "link":
        return (k, item["dev"])
    if k == "address":
        return (k, item["dev"], item["cidr"])
    if k == "sysctl":
        return (k, item["name"])
    if k == "nft_table":
        return (k, item["family"], item["name"])
    if k == "route":
        return (k, item["dst"], item.get("dev"), item.get("gateway"))
    return (k, json.dumps(item, sort_keys=True))


class _Recorder:
    """Appends an item to the record (on disk) before the change is applied."""

    def __init__(self, record_path):
        self.path = record_path
        self.record = read_record(record_path)

    def find(self, item: dict) -> dict | None:
        key = _key(item)
        for it in self.record["items"]:
            if _key(it) == key:
                return it
        return None

    def add(self, item: dict) -> dict:
        """Record ``item`` unless already recorded; return the recorded one."""
        old = self.find(item)
        if old is not None:
            return old
        self.record["items"].append(item)
        _write_record(self.path, self.record)
        return item

    def remove(self, item: dict) -> None:
        key = _key(item)
        self.record["items"] = [it for it in self.record["items"] if _key(it) != key]
        _write_record(self.path, self.record)


# -- steps ------------------------------------------------------------------------

def _link(rec: _Recorder, dev: str, mtu: int) -> None:
    info = routes.link_info(dev)
    rec.add({"kind": "link", "dev": dev, "mtu_before": info["mtu"], "up_before": info["up"]})
    routes.set_link(dev, mtu=mtu)


def _address(rec: _Recorder, dev: str, cidr: str) -> None:
    item = {"kind": "address", "dev": dev, "cidr": str(ipaddress.ip_interface(cidr))}
    if rec.find(item) is None and routes.has_address(dev, cidr):
        log.info("address %s already on %s; leaving it alone", cidr, dev)
        return
    rec.add(item)
    routes.add_address(dev, cidr)


def _sysctl_on(rec: _Recorder, name: str, fn) -> int:
    """Switch it on; returns the value before the first (recorded) change."""
    before = fn()
    item = rec.add({"kind": "sysctl", "name": name, "before": before, "value": 1})
    if before != 1:
        fn(1)
    return item["before"]


def _check_cidr(address_cidr: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        return ipaddress.ip_interface(address_cidr)
    except ValueError as exc:
        raise NetError(f"bad tunnel address {address_cidr!r}: expected ADDRESS/PREFIXLEN, "
                       f"e.g. 100.64.0.1/10") from exc


def setup_gateway(record_path, tun: str, address_cidr: str, upstream_interface: str, mtu: int,
                  address6_cidr: str | None = None, listen_port: int | None = None,
                  inits_per_source_s: int = 10) -> None:
    """Address(es) + MTU + up on ``tun``, forwarding on (previous value restored by
    teardown), and the nft table ``inet tunnelgate_<tun>`` (masquerade of the
    tunnel prefixes out of ``upstream_interface``, forward accept rules).
    ``address6_cidr``: the IPv6 side of a dual-stack tunnel."""
    ifaces = [_check_cidr(c) for c in (address_cidr, address6_cidr) if c]
    rec = _Recorder(record_path)
    _link(rec, tun, mtu)
    for iface in ifaces:
        _address(rec, tun, str(iface))
    routes.set_link(tun, up=True)
    # forwarding the gateway switched on is for its TUN only; a host that already
    # forwarded (a router, containers) keeps its other forwarding
    exclusive = []
    for iface in ifaces:
        if iface.version == 4:
            before = _sysctl_on(rec, "ipv4.ip_forward", routes.ip_forward)
        else:
            # only for an IPv6 tunnel: all.forwarding=1 turns off accept_ra everywhere
            before = _sysctl_on(rec, "ipv6.conf.all.forwarding", routes.ip6_forward)
        if before != 1:
            exclusive.append("ipv4" if iface.version == 4 else "ipv6")
    if len(exclusive) < len(ifaces):
        log.warning("forwarding was already on: other forwarding out of %s is left to the host's "
                    "firewall (the tunnel's masquerade and the spoofing checks apply regardless)",
                    upstream_interface)
    table = nft.table_name(tun)
    rec.add({"kind": "nft_table", "family": nft.FAMILY, "name": table})
    nft.apply_gateway(tun, [str(i.network) for i in ifaces], upstream_interface, exclusive=tuple(exclusive),
                      listen_port=listen_port, inits_per_source_s=inits_per_source_s)


def setup_client_tun(record_path, tun: str, address_cidr: str, mtu: int,
                     address6_cidr: str | None = None) -> None:
    """Address(es) + MTU + up on the client's TUN (after the handshake assigned them)."""
    ifaces = [_check_cidr(c) for c in (address_cidr, address6_cidr) if c]
    rec = _Recorder(record_path)
    _link(rec, tun, mtu)
    for iface in ifaces:
        _address(rec, tun, str(iface))
    routes.set_link(tun, up=True)


def connected_networks(tun: str) -> list[str]:
    """Networks reached directly (no gateway) through interfaces other than ``tun``
    and loopback: the LAN, the gateway's link."""
    out = []
    for fam, dst, gw, dev, _src, _metric, _proto, _scope, rtype in routes.snapshot():
        if gw or rtype != 1 or dev in ("", "lo", tun) or dst.endswith("/0") or dst in out:
            continue
        out.append(dst)
    return out


def setup_kill_switch(record_path, tun: str, routes_: list[str], endpoints: list[tuple[str, int]]) -> None:
    """The client's kill switch (nft table ``inet tunnelgate_ks_<tun>``): what
    ``routes_`` cover leaves only through ``tun``, except the tunnel's own UDP to
    ``endpoints`` and the networks connected now. Recorded before it is applied,
    so ``teardown`` (``down`` after a crash, the next start) removes it; calling
    again replaces it (the gateway moved)."""
    rec = _Recorder(record_path)
    rec.add({"kind": "nft_table", "family": nft.FAMILY, "name": nft.killswitch_table_name(tun)})
    nft.apply_killswitch(tun, routes_, endpoints, connected_networks(tun))


def split_routes(prefixes: list[str]) -> list[str]:
    """Normalize prefixes; a default route becomes two halves so the original default stays."""
    out: list[str] = []
    for p in prefixes:
        try:
            net = ipaddress.ip_network(p, strict=False)
        except ValueError as exc:
            raise NetError(f"bad route {p!r} in routes: expected a prefix like 10.0.0.0/8 or 0.0.0.0/0") from exc
        if net.prefixlen == 0:
            halves = ["0.0.0.0/1", "128.0.0.0/1"] if net.version == 4 else ["::/1", "8000::/1"]
        else:
            halves = [str(net)]
        for h in halves:
            if h not in out:
                out.append(h)
    return out


def _original_next_hop(endpoint: str, tun: str) -> dict | None:
    """The route to the endpoint outside the tunnel; None if it is local."""
    r = routes.route_get(endpoint)
    if r["oif"] == "lo":
        return None
    if r["oif"] == tun:
        r = routes.main_table_lookup(endpoint, exclude_dev=tun)
    return r


def setup_client_routes(record_path, tun: str, routes_: list[str], endpoint_ip) -> None:
    """Routes via ``tun``; before them, a host route to ``endpoint_ip`` (one address, or
    a list: a client with several gateways) via its original next hop when a tunnel
    route would cover it (so the tunnel's own UDP stays off the tunnel). Calling again
    (gateway moved, routes changed) replaces the previous endpoint routes and tunnel routes."""
    wanted = split_routes(routes_)
    rec = _Recorder(record_path)
    # 1. the endpoints' host routes, where an endpoint falls inside a tunnel route
    ep_items = []
    for text in ([endpoint_ip] if isinstance(endpoint_ip, str) else list(endpoint_ip)):
        try:
            ep = ipaddress.ip_address(text)
        except ValueError as exc:
            raise NetError(f"bad gateway endpoint address {text!r}") from exc
        if any(ep in ipaddress.ip_network(p) for p in wanted):
            hop = _original_next_hop(str(ep), tun)
            if hop is not None:
                item = {"kind": "route", "role": "endpoint", "dst": f"{ep}/{ep.max_prefixlen}",
                        "dev": hop["oif"] or None, "gateway": hop["gateway"]}
                _route(rec, item)
                ep_items.append(item)
    keep = {_key(it) for it in ep_items}
    for old in [it for it in rec.record["items"] if it["kind"] == "route" and it.get("role") == "endpoint"]:
        if _key(old) not in keep:
            routes.del_route(old["dst"], dev=old.get("dev"), gateway=old.get("gateway"))
            rec.remove(old)
    # 2. tunnel routes: drop the ones no longer wanted, add the new ones
    want_items = [{"kind": "route", "role": "tunnel", "dst": p, "dev": tun, "gateway": None}
                  for p in wanted]
    want_keys = {_key(it) for it in want_items}
    for old in [it for it in rec.record["items"] if it["kind"] == "route" and it.get("role") == "tunnel"]:
        if _key(old) not in want_keys:
            routes.del_route(old["dst"], dev=old.get("dev"), gateway=old.get("gateway"))
            rec.remove(old)
    for it in want_items:
        _route(rec, it)


def _route(rec: _Recorder, item: dict) -> None:
    recorded = rec.find(item) is not None
    if not recorded and routes.find_routes(item["dst"], dev=item["dev"], gateway=item["gateway"]):
        log.info("route %s already present; leaving it alone", item["dst"])
        return
    rec.add(item)
    routes.add_route(item["dst"], dev=item["dev"], gateway=item["gateway"])

def setup_source_nat(record_path, tun: str, own: list[str], routes_: list[tuple[str, str]]) -> None:
    """The client's per-gateway source translation (nft table ``inet
    tunnelgate_sn_<tun>``, see nft.srcnat_ruleset): recorded before it is applied, so
    ``teardown`` removes it; ``routes_`` empty: the table is removed (every gateway
    carrying something leased the TUN's own address)."""
    rec = _Recorder(record_path)
    item = {"kind": "nft_table", "family": nft.FAMILY, "name": nft.srcnat_table_name(tun)}
    if not routes_:
        if rec.find(item) is not None:
            nft.remove_table(item["name"], item["family"])
            rec.remove(item)
        return
    rec.add(item)
    nft.apply_srcnat(tun, own, routes_)


# -- teardown ---------------------------------------------------------------------

def _undo(item: dict) -> None:
    k = item["kind"]
    if k == "route":
        routes.del_route(item["dst"], dev=item.get("dev"), gateway=item.get("gateway"))
    elif k == "address":
        routes.del_address(item["dev"], item["cidr"])
    elif k == "link":
        try:
            routes.set_link(item["dev"], mtu=item["mtu_before"], missing_ok=True)
            if not item["up_before"]:
                routes.set_link(item["dev"], up=False, missing_ok=True)
        except NetError as exc:
            log.warning("could not restore link %s: %s", item["dev"], exc)
    elif k == "sysctl":
        fn = {"ipv4.ip_forward": routes.ip_forward,
              "ipv6.conf.all.forwarding": routes.ip6_forward}[item["name"]]
        # restore only if nobody changed it since we set it
        if fn() == item["value"] and item["before"] != item["value"]:
            fn(item["before"])
    elif k == "nft_table":
        nft.remove_table(item["name"], item["family"])
    else:
        raise NetError(f"unknown item kind {k!r} in network record")


def teardown(record_path) -> None:
    """Undo everything the record lists (reverse order), then delete it.
    Idempotent; no record is fine. Items that could not be undone stay in the
    record and a NetError lists them."""
    path = Path(record_path)
    if not path.exists():
        return
    record = read_record(path)
    failed = []
    for item in reversed(record["items"]):
        try:
            _undo(item)
        except (NetError, OSError, KeyError) as exc:
            log.error("teardown: could not undo %s: %s", item, exc)
            failed.append((item, exc))
    if failed:
        record["items"] = [it for it, _ in reversed(failed)]
        _write_record(path, record)
        raise NetError("teardown left these in place: "
                       + "; ".join(f"{it} ({exc})" for it, exc in failed)
                       + f"; fix and rerun, the record {path} lists them")
    try:
        path.unlink()
    except FileNotFoundError:
        pass
