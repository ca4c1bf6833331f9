"""Addresses, links and routes over pyroute2.IPRoute, plus ip_forward.

Functions act on the caller's network namespace unless ``netns=`` names
another one (pyroute2 opens its netlink socket there; used by tests and the
lab). ``ip_forward`` reads /proc/sys of the caller's namespace only: run it
inside the namespace (``ip netns exec``) to see another one.
"""

from __future__ import annotations

import errno
import ipaddress
from contextlib import contextmanager
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .nft import NetError

__all__ = [
    "NetError", "link_index", "link_name", "link_info", "configure_interface", "set_link",
    "add_address", "del_address", "has_address", "route_get", "add_route", "del_route",
    "find_routes", "snapshot", "ip_forward", "ip6_forward", "main_table_lookup",
]

MAIN_TABLE = 254
AF = {4: 2, 6: 10}          # AF_INET, AF_INET6
FAMILY_NAME = {2: "inet", 10: "inet6"}
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
IP6_FORWARD = Path("/proc/sys/net/ipv6/conf/all/forwarding")


@contextmanager
def _ipr(netns: str | None = None):
    try:
        ipr = IPRoute(netns=netns) if netns else IPRoute()
    except (OSError, NetlinkError) as exc:
        raise NetError(f"cannot open netlink{' in netns ' + netns if netns else ''}: {exc}: "
                       f"needs root or CAP_NET_ADMIN") from exc
    try:
        yield ipr
    finally:
        ipr.close()


def _nl_error(what: str, exc: NetlinkError) -> NetError:
    code = exc.code if hasattr(exc, "code") else 0
    hint = {
        errno.EPERM: "needs root or CAP_NET_ADMIN",
        errno.EEXIST: "something else already configured it; check `ip addr` / `ip route`",
        errno.ENODEV: "the interface is gone",
        errno.ENETUNREACH: "the gateway is not reachable on that interface; check the link address",
        errno.EINVAL: "check the value",
    }.get(code, "check `ip addr` / `ip route` in this namespace")
    return NetError(f"{what}: {exc}: {hint}")


def _attr(msg, name, default=None):
    v = msg.get_attr(name) if hasattr(msg, "get_attr") else None
    return default if v is None else v


def link_index(ipr: IPRoute, name: str) -> int:
    idx = ipr.link_lookup(ifname=name)
    if not idx:
        raise NetError(f"interface {name!r} not found: is it created (and in this namespace)?")
    return idx[0]


def link_name(ipr: IPRoute, index: int | None) -> str:
    if not index:
        return ""
    try:
        links = ipr.get_links(index)
    except NetlinkError:
        return f"if{index}"
    return _attr(links[0], "IFLA_IFNAME", f"if{index}") if links else f"if{index}"


def link_info(name: str, netns: str | None = None) -> dict:
    """{'index', 'mtu', 'up'} of an interface (NetError if missing)."""
    with _ipr(netns) as ipr:
        idx = link_index(ipr, name)
        link = ipr.get_links(idx)[0]
        return {"index": idx, "mtu": int(_attr(link, "IFLA_MTU", 0)), "up": bool(link["flags"] & 1)}


def set_link(name: str, mtu: int | None = None, up: bool | None = None,
             netns: str | None = None, missing_ok: bool = False) -> None:
    with _ipr(netns) as ipr:
        try:
            idx = link_index(ipr, name)
        except NetError:
            if missing_ok:
                return
            raise
        kw = {}
        if mtu is not None:
            kw["mtu"] = int(mtu)
        if up is not None:
            kw["state"] = "up" if up else "down"
        if not kw:
            return
        try:
            ipr.link("set", index=idx, **kw)
        except NetlinkError as exc:
            if missing_ok and exc.code == errno.ENODEV:
                return
            raise _nl_error(f"setting {kw} on {name}", exc) from exc


def _iface(cidr: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        return ipaddress.ip_interface(cidr)
    except ValueError as exc:
        raise NetError(f"bad address {cidr!r}: expected ADDRESS/PREFIXLEN, e.g. 100.64.0.1/10") from exc


def has_address(name: str, cidr: str, netns: str | None = None) -> bool:
    iface = _iface(cidr)
    with _ipr(netns) as ipr:
        try:
            idx = link_index(ipr, name)
        except NetError:
            return False
        for a in ipr.get_addr(index=idx, family=AF[iface.version]):
            if _attr(a, "IFA_ADDRESS") == str(iface.ip) and a["prefixlen"] == iface.network.prefixlen:
                return True
    return False


def add_address(name: str, cidr: str, netns: str | None = None) -> bool:
    """Add an address; False if it was already there (nothing changed)."""
    iface = _iface(cidr)
    with _ipr(netns) as ipr:
        idx = link_index(ipr, name)
        try:
            ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen,
                     family=AF[iface.version])
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            raise _nl_error(f"adding address {cidr} to {name}", exc) from exc
    return True


def del_address(name: str, cidr: str, netns: str | None = None) -> bool:
    """Remove an address; False if it (or the interface) was not there."""
    iface = _iface(cidr)
    with _ipr(netns) as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return False
        try:
            ipr.addr("del", index=idx[0], address=str(iface.ip), prefixlen=iface.network.prefixlen,
                     family=AF[iface.version])
        except NetlinkError as exc:
            if exc.code in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ESRCH, errno.ENOENT):
                return False
            raise _nl_error(f"removing address {cidr} from {name}", exc) from exc
    return True


def configure_interface(name: str, address_cidr: str | None = None, mtu: int | None = None,
                        up: bool = True, netns: str | None = None) -> None:
    """MTU, then address, then up (so no packet goes out with the wrong MTU)."""
    if mtu is not None:
        set_link(name, mtu=mtu, netns=netns)
    if address_cidr:
        add_address(name, address_cidr, netns=netns)
    if up:
        set_link(name, up=True, netns=netns)


# -- routes ----------------------------------------------------------------------

def _net(dst: str):
    try:
        return ipaddress.ip_network(dst, strict=True)
    except ValueError as exc:
        raise NetError(f"bad route prefix {dst!r}: {exc}") from exc


def route_get(dst: str, netns: str | None = None) -> dict:
    """What the kernel would do for ``dst``: {'gateway': str|None, 'oif': name, 'prefsrc': str|None}."""
    try:
        ip = ipaddress.ip_address(dst)
    except ValueError as exc:
        raise NetError(f"bad destination address {dst!r}") from exc
    with _ipr(netns) as ipr:
        try:
            r = ipr.route("get", dst=str(ip), family=AF[ip.version])[0]
        except NetlinkError as exc:
            raise _nl_error(f"no route to {dst}", exc) from exc
        return {
            "gateway": _attr(r, "RTA_GATEWAY"),
            "oif": link_name(ipr, _attr(r, "RTA_OIF")),
            "prefsrc": _attr(r, "RTA_PREFSRC"),
        }


def _route_kw(ipr, dst: str, dev: str | None, gateway: str | None, metric: int | None) -> dict:
    net = _net(dst)
    kw = {"dst": str(net.network_address), "dst_len": net.prefixlen, "family": AF[net.version],
          "table": MAIN_TABLE}
    if dev:
        kw["oif"] = link_index(ipr, dev)
    if gateway:
        gw = ipaddress.ip_address(gateway)
        if gw.version != net.version:
            raise NetError(f"route {dst}: gateway {gateway} is not of the same IP version")
        kw["gateway"] = str(gw)
    if metric is not None:
        kw["priority"] = int(metric)
    return kw


def find_routes(dst: str, dev: str | None = None, gateway: str | None = None,
                netns: str | None = None) -> list[dict]:
    """Main-table routes with exactly this prefix (optionally this dev/gateway),
    as {'dst', 'dev', 'gateway', 'metric'}."""
    net = _net(dst)
    out = []
    with _ipr(netns) as ipr:
        for r in ipr.get_routes(family=AF[net.version], table=MAIN_TABLE):
            if r["dst_len"] != net.prefixlen or r["type"] != 1:
                continue
            rdst = _attr(r, "RTA_DST", "0.0.0.0" if net.version == 4 else "::")
            if ipaddress.ip_address(rdst) != net.network_address:
                continue
            rdev = link_name(ipr, _attr(r, "RTA_OIF"))
            rgw = _attr(r, "RTA_GATEWAY")
            if dev and rdev != dev:
                continue
            if gateway and rgw != str(ipaddress.ip_address(gateway)):
                continue
            out.append({"dst": str(net), "dev": rdev, "gateway": rgw,
                        "metric": int(_attr(r, "RTA_PRIORITY", 0))})
    return out


def add_route(dst: str, dev: str | None = None, gateway: str | None = None,
              metric: int | None = None, netns: str | None = None) -> bool:
    """Add a main-table route. False if exactly this route was already there;
    NetError if the prefix is taken by a different route (another VPN?)."""
    if not dev and not gateway:
        raise NetError(f"route {dst}: needs a dev or a gateway")
    with _ipr(netns) as ipr:
        kw = _route_kw(ipr, dst, dev, gateway, metric)
        try:
            ipr.route("add", **kw)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                if find_routes(dst, dev=dev, gateway=gateway, netns=netns):
                    return False
                others = find_routes(dst, netns=netns)
                raise NetError(f"route {dst} already exists ({others}): another VPN or a manual "
                               f"route owns it; remove it or choose other routes") from exc
            raise _nl_error(f"adding route {dst}" + (f" via {gateway}" if gateway else "")
                            + (f" dev {dev}" if dev else ""), exc) from exc
    return True


def del_route(dst: str, dev: str | None = None, gateway: str | None = None,
              metric: int | None = None, netns: str | None = None) -> bool:
    """Delete the route matching prefix (+dev/gateway); False if not there."""
    with _ipr(netns) as ipr:
        try:
            kw = _route_kw(ipr, dst, dev, gateway, metric)
        except NetError:
            if dev and not ipr.link_lookup(ifname=dev):
                return False            # device gone: its routes went with it
            raise
        try:
            ipr.route("del", **kw)
        except NetlinkError as exc:
            if exc.code in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                return False
            raise _nl_error(f"removing route {dst}", exc) from exc
    return True


def main_table_lookup(dst: str, exclude_dev: str | None = None, netns: str | None = None) -> dict:
    """Longest-prefix match in the main table ignoring routes via ``exclude_dev``
    (used to find the original next hop once the tunnel's routes are installed).
    Same shape as route_get; NetError if nothing matches."""
    ip = ipaddress.ip_address(dst)
    best = None
    with _ipr(netns) as ipr:
        for r in ipr.get_routes(family=AF[ip.version], table=MAIN_TABLE):
            if r["type"] != 1:
                continue
            dev = link_name(ipr, _attr(r, "RTA_OIF"))
            if exclude_dev and dev == exclude_dev:
                continue
            rdst = _attr(r, "RTA_DST", "0.0.0.0" if ip.version == 4 else "::")
            net = ipaddress.ip_network(f"{rdst}/{r['dst_len']}", strict=False)
            if ip not in net:
                continue
            key = (r["dst_len"], -int(_attr(r, "RTA_PRIORITY", 0)))
            if best is None or key > best[0]:
                best = (key, {"gateway": _attr(r, "RTA_GATEWAY"), "oif": dev,
                              "prefsrc": _attr(r, "RTA_PREFSRC")})
    if best is None:
        raise NetError(f"no route to {dst} outside {exclude_dev}: is the network up?")
    return best[1]


def snapshot(netns: str | None = None) -> list[tuple]:
    """Sorted, comparable list of the main table's IPv4 and IPv6 routes:
    (family, dst/len, gateway, dev, prefsrc, metric, proto, scope, type)."""
    rows = []
    with _ipr(netns) as ipr:
        names = {l["index"]: _attr(l, "IFLA_IFNAME", "") for l in ipr.get_links()}
        for fam in (2, 10):
            for r in ipr.get_routes(family=fam, table=MAIN_TABLE):
                if _attr(r, "RTA_TABLE", r["table"]) != MAIN_TABLE:
                    continue
                rdst = _attr(r, "RTA_DST", "0.0.0.0" if fam == 2 else "::")
                mp = _attr(r, "RTA_MULTIPATH")
                if mp:
                    gw = ",".join(sorted(f"{_attr(h, 'RTA_GATEWAY', '')}@{names.get(h['oif'], '')}"
                                         for h in mp))
                else:
                    gw = _attr(r, "RTA_GATEWAY", "") or ""
                rows.append((FAMILY_NAME[fam], f"{rdst}/{r['dst_len']}", gw,
                             names.get(_attr(r, "RTA_OIF"), ""), _attr(r, "RTA_PREFSRC", "") or "",
                             int(_attr(r, "RTA_PRIORITY", 0)), int(r["proto"]), int(r["scope"]),
                             int(r["type"])))
    return sorted(rows)


# -- forwarding sysctls (this namespace) ------------------------------------------

def _sysctl(path: Path, value: int | None) -> int:
    try:
        if value is not None:
            path.write_text(f"{int(value)}\n")
        return int(path.read_text().strip())
    except FileNotFoundError as exc:
        raise NetError(f"{path} missing: is {'IPv6' if 'ipv6' in str(path) else 'IPv4'} enabled "
                       f"in this kernel/namespace?") from exc
    except PermissionError as exc:
        raise NetError(f"cannot write {path}: needs root (and a writable /proc/sys)") from exc


def ip_forward(value: int | None = None) -> int:
    """Get (or set, then get) net.ipv4.ip_forward of the caller's namespace."""
    return _sysctl(IP_FORWARD, value)


def ip6_forward(value: int | None = None) -> int:
    """Get (or set, then get) net.ipv6.conf.all.forwarding of the caller's namespace."""
    return _sysctl(IP6_FORWARD, value)
