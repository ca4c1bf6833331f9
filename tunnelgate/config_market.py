"""The market's tables of both config files: which gateways a client knows or
looks for, how it chooses and fails over, and what a gateway announces.

Client:

    [[gateways]]                 # any number; [gateway] alone is the one-gateway case
    endpoint = "198.18.1.11:51900"
    public_key = "..."
    label = "north"              # optional

    [discovery]
    mdns = true                  # find gateways announcing on these links
    interfaces = ["veth0"]
    max_candidates = 32

    [choice]
    switch_margin = "0.2"        # move a destination only for a price better by this
    failover_s = 0.6             # silence while sending that declares a gateway dead

Gateway:

    [advertise]
    mdns = true
    interfaces = ["veth-c"]
    endpoints = ["198.18.1.11:51900"]     # default: the listen address (listening on 0.0.0.0
                                          # or ::, the addresses of the interfaces above)
    label = "north"
    lifetime_s = 600
"""

from __future__ import annotations

from dataclasses import dataclass

from tunnelgate.protocol.advert import MAX_CANDIDATES, MAX_ENDPOINTS, MAX_LIFETIME_S
from tunnelgate.protocol.choice import DEFAULT_SWITCH_MARGIN
from tunnelgate.protocol.liveness import DEFAULT_DEAD_AFTER_S

LABEL_MAX = 32


@dataclass(frozen=True)
class GatewaySpec:
    endpoint: tuple[str, int]
    public_key: bytes
    label: str = ""
    source: str = "config"


@dataclass(frozen=True)
class Discovery:
    mdns: bool = False
    interfaces: tuple[str, ...] = ()
    max_candidates: int = MAX_CANDIDATES


@dataclass(frozen=True)
class Choice:
    switch_margin: float = DEFAULT_SWITCH_MARGIN
    failover_s: float = DEFAULT_DEAD_AFTER_S


@dataclass(frozen=True)
class Advertise:
    mdns: bool = False
    interfaces: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ()
    label: str = ""
    lifetime_s: int = 600


def _label(t, default: str = "") -> str:
    label = t.get("label", str, f"a short name (at most {LABEL_MAX} characters of A-Z a-z 0-9 _ -)", default)
    if len(label) > LABEL_MAX or not all(c.isalnum() or c in "_-" for c in label):
        raise t.error("label", f"a short name (at most {LABEL_MAX} characters of A-Z a-z 0-9 _ -)", label)
    return label


def _interfaces(t, required: bool) -> tuple[str, ...]:
    names = t.get("interfaces", list, 'a list of interface names, e.g. ["eth0"]', [])
    out = []
    for i, name in enumerate(names):
        one, key = t.element("interfaces", i, name)
        out.append(one.ifname(key))
    if required and not out:
        raise t.error("interfaces", "at least one interface to use mDNS on, e.g. [\"eth0\"]")
    return tuple(out)


def gateways(r, key_reader) -> tuple[GatewaySpec, ...]:
    """[gateway] and [[gateways]] of a client file; ``key_reader(table, key)`` decodes and
    checks a public key (config.py owns the key rules and their messages)."""
    out: list[GatewaySpec] = []
    if "gateway" in r.data:
        gw = r.table("gateway")
        out.append(GatewaySpec(gw.endpoint("endpoint"), key_reader(gw, "public_key"), _label(gw)))
        gw.finish()
    for t in r.tables("gateways"):
        out.append(GatewaySpec(t.endpoint("endpoint"), key_reader(t, "public_key"), _label(t)))
        t.finish()
    seen: dict[bytes, int] = {}
    for i, g in enumerate(out):
        if g.public_key in seen:
            raise r.error("gateways", f"each gateway once: gateway {i + 1} repeats the public key of "
                                      f"gateway {seen[g.public_key] + 1}")
        seen[g.public_key] = i
    return tuple(out)


def discovery(r) -> Discovery:
    if "discovery" not in r.data:
        return Discovery()
    t = r.table("discovery")
    mdns = t.boolean("mdns", False)
    d = Discovery(mdns=mdns, interfaces=_interfaces(t, mdns),
                  max_candidates=t.integer("max_candidates", MAX_CANDIDATES, 1, 1024))
    t.finish()
    return d


def choice(r) -> Choice:
    if "choice" not in r.data:
        return Choice()
    t = r.table("choice")
    margin = float(t.fraction("switch_margin", str(DEFAULT_SWITCH_MARGIN)))
    if margin >= 1.0:
        raise t.error("switch_margin", 'a fraction below 1, e.g. "0.2"', margin)
    c = Choice(switch_margin=margin,
               failover_s=t.number("failover_s", DEFAULT_DEAD_AFTER_S, 0.05, 60.0,
                                   "silence while sending before a gateway counts as dead"))
    t.finish()
    return c


def advertise(r, listen: tuple[str, int]) -> Advertise:
    if "advertise" not in r.data:
        return Advertise()
    t = r.table("advertise")
    mdns = t.boolean("mdns", False)
    host, port = listen
    # listening on every address: the default is the announcing interfaces' addresses,
    # known at start (daemon/advertise.py), so nothing here
    default_ep = [] if host in ("0.0.0.0", "::") else [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    eps = t.get("endpoints", list, 'a list of "ADDRESS:PORT" clients can reach', default_ep)
    if (not eps and "endpoints" in t.data) or len(eps) > MAX_ENDPOINTS:
        raise t.error("endpoints", f"1 to {MAX_ENDPOINTS} endpoints", eps)
    checked = []
    for i, ep in enumerate(eps):
        one, key = t.element("endpoints", i, ep)
        h, p = one.endpoint(key)
        checked.append(f"[{h}]:{p}" if ":" in h else f"{h}:{p}")
    if not mdns and "interfaces" not in t.data:
        interfaces: tuple[str, ...] = ()
    else:
        interfaces = _interfaces(t, mdns)
    a = Advertise(mdns=mdns, interfaces=interfaces, endpoints=tuple(checked), label=_label(t),
                  lifetime_s=t.integer("lifetime_s", 600, 60, int(MAX_LIFETIME_S), "seconds",
                                       "adverts older than a day are refused"))
    t.finish()
    return a
