"""nftables rules of the gateway, in one table of its own, via ``nft -f -``.

The gateway's table is ``inet tunnelgate_<tun>``; nothing here touches any
other table. Applying is idempotent (``table`` + ``delete table`` + the full
definition in one nft transaction, so it works whether or not the table
existed) and removing deletes exactly that table.

Every function takes ``netns=``: None runs ``nft`` in the caller's network
namespace, a name runs it through ``ip netns exec NAME`` (for tests and the lab).
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess

from ..wire import INIT, INIT_MIN, TRANSPORT_KINDS, TRANSPORT_MIN
from ..offload.chunks import DATA_CHUNK

__all__ = [
    "NetError", "FAMILY", "MASQ_MARK", "table_name", "gateway_ruleset", "apply_gateway", "remove_table",
    "killswitch_table_name", "killswitch_ruleset", "apply_killswitch",
    "srcnat_table_name", "srcnat_ruleset", "apply_srcnat",
    "table_exists", "counter_table", "read_counters", "list_ruleset", "nft",
]

FAMILY = "inet"
NFT_TIMEOUT = 20
_IFNAME = re.compile(r"^[A-Za-z0-9_.@:+-]{1,15}$")
_TABLE = re.compile(r"^[A-Za-z0-9_]{1,64}$")


class NetError(Exception):
    """A network change failed; the message says what failed and what to do."""


def _check_ifname(name: str, what: str) -> str:
    if not isinstance(name, str) or not _IFNAME.match(name):
        raise NetError(f"bad {what} interface name {name!r}: 1-15 characters of [A-Za-z0-9_.@:+-]")
    return name


def _check_table(name: str) -> str:
    if not isinstance(name, str) or not _TABLE.match(name):
        raise NetError(f"bad nft table name {name!r}: letters, digits, '_' only")
    return name


def nft(args: list[str] | None = None, script: str | None = None, netns: str | None = None,
        what: str = "nft") -> str:
    """Run nft (with ``-f -`` when a script is given); return stdout; NetError on failure."""
    exe = shutil.which("nft") or "/usr/sbin/nft"
    cmd = [exe] + (args or [])
    if script is not None:
        cmd += ["-f", "-"]
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    try:
        p = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=NFT_TIMEOUT)
    except FileNotFoundError as exc:
        raise NetError(f"{what}: cannot run {cmd[0]}: {exc}: install nftables (apt-get install nftables)") from exc
    except subprocess.TimeoutExpired as exc:
        raise NetError(f"{what}: nft did not answer in {NFT_TIMEOUT}s") from exc
    if p.returncode != 0:
        msg = (p.stderr or p.stdout).strip()
        hint = "run as root or with CAP_NET_ADMIN" if "ermission" in msg or "not permitted" in msg \
            else "check that the kernel has nf_tables (modprobe nf_tables nft_masq) and the arguments are right"
        raise NetError(f"{what} failed: {msg}: {hint}")
    return p.stdout


def table_name(tun: str) -> str:
    return "tunnelgate_" + _check_ifname(tun, "tun").replace("-", "_").replace(".", "_") \
        .replace("@", "_").replace(":", "_").replace("+", "_")


# Set in the forward chain on what enters from the TUN and required by the masquerade:
# postrouting has no input interface, and a packet that did not come out of the
# TUN must never leave with the gateway's address (billed to nobody, or to the
# client whose tunnel address it forged). One bit, so other users of the mark keep theirs.
MASQ_MARK = 0x00100000


def _prefixes(tunnel_prefixes: str | list[str]) -> list:
    if isinstance(tunnel_prefixes, str):
        tunnel_prefixes = [tunnel_prefixes]
    nets = []
    for prefix in tunnel_prefixes:
        try:
            nets.append(ipaddress.ip_network(prefix, strict=False))
        except ValueError as exc:
            raise NetError(f"bad tunnel prefix {prefix!r}: {exc}") from exc
    return nets


# The gateway port's guard (chain `port_guard`): what cannot be a datagram a client
# sends is dropped before the daemon (or conntrack) sees it, and one source's INITs
# are limited. Only lower bounds on length: a UDP GRO receive hands netfilter one
# packet for many back-to-back datagrams of a flow, so an upper bound could drop
# legitimate transport bursts; the type byte and the reserved top byte are the
# first datagram's, which the daemon checks anyway. RESP (2) and COOKIE (8) only
# ever travel to clients.
GUARD_TYPES = tuple(sorted({INIT, DATA_CHUNK, *TRANSPORT_KINDS}))
UDP_HDR = 8
INIT_SOURCES = 65535                         # tracked sources; past it, INITs pass to the daemon's limits


def _port_guard(port: int, inits_per_source_s: int) -> tuple[str, str]:
    """(sets, chain) of the gateway port's guard: INITs per source address beyond
    `inits_per_source_s` (bursts of twice that) are dropped; a client retries once a second."""
    if not isinstance(port, int) or not 0 < port < 65536:
        raise NetError(f"bad gateway listen port {port!r}")
    if not isinstance(inits_per_source_s, int) or inits_per_source_s < 1:
        raise NetError(f"bad handshake rate {inits_per_source_s!r}: a whole number per second, at least 1")
    rate = f"{inits_per_source_s}/second burst {2 * inits_per_source_s} packets"
    types = ", ".join(map(str, GUARD_TYPES))
    sets = "\n".join(
        f"    set {name} {{ type {kind}; size {INIT_SOURCES}; flags dynamic,timeout; timeout 60s; }}"
        for name, kind in (("inits4", "ipv4_addr"), ("inits6", "ipv6_addr")))
    chain = f"""    chain port_guard {{
        udp length < {TRANSPORT_MIN + UDP_HDR} counter drop
        @th,64,8 != {{ {types} }} counter drop
        @th,88,8 != 0 counter drop
        @th,64,8 {INIT} udp length < {INIT_MIN + UDP_HDR} counter drop
        meta nfproto ipv4 @th,64,8 {INIT} update @inits4 {{ ip saddr limit rate over {rate} }} counter drop
        meta nfproto ipv6 @th,64,8 {INIT} update @inits6 {{ ip6 saddr limit rate over {rate} }} counter drop
    }}"""
    return sets, chain


def gateway_ruleset(tun: str, tunnel_prefixes: str | list[str], upstream_interface: str,
                    exclusive: tuple[str, ...] = (), listen_port: int | None = None,
                    inits_per_source_s: int = 10) -> str:
    """The table definition (without the delete-then-add wrapper).

    - prerouting: a packet with a tunnel source address arriving on any interface
      but the TUN (or loopback) is forged: dropped before conntrack sees it;
    - forward: TUN -> upstream is accepted and marked; into the TUN from elsewhere
      only replies (established/related) pass, so no neighbour can send into a
      client's tunnel at the client's expense;
    - ``exclusive``: the families ("ipv4", "ipv6") whose forwarding the gateway
      itself switched on: there nothing but the TUN may be forwarded out of the
      upstream interface (a host that already forwarded keeps its other forwarding);
    - postrouting: masquerade only marked packets from the tunnel prefixes;
    - ``listen_port``: UDP to the gateway's own port goes through ``port_guard``
      first (see _port_guard), at raw priority, before conntrack.
    """
    _check_ifname(tun, "tun")
    _check_ifname(upstream_interface, "upstream")
    nets = _prefixes(tunnel_prefixes)
    for fam in exclusive:
        if fam not in ("ipv4", "ipv6"):
            raise NetError(f"bad family {fam!r}: ipv4 or ipv6")
    spoof, masq = [], []
    mark = f"0x{MASQ_MARK:08x}"
    for net in nets:
        proto = "ip" if net.version == 4 else "ip6"
        spoof.append(f'        iifname != {{ "{tun}", "lo" }} {proto} saddr {net} drop')
        masq.append(f'        meta mark & {mark} == {mark} {proto} saddr {net} oifname "{upstream_interface}" '
                    f'masquerade')
    others = [f'        meta nfproto {fam} oifname "{upstream_interface}" drop' for fam in exclusive]
    guard_sets = guard_chain = ""
    if listen_port is not None:
        guard_sets, guard_chain = _port_guard(listen_port, inits_per_source_s)
        spoof.append(f'        iifname != "{tun}" udp dport {listen_port} fib daddr type local jump port_guard')
        guard_sets, guard_chain = guard_sets + "\n", guard_chain + "\n"
    t = table_name(tun)
    nl = "\n"
    return f"""table {FAMILY} {t} {{
{guard_sets}    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
{nl.join(spoof)}
    }}
{guard_chain}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{tun}" oifname "{upstream_interface}" meta mark set meta mark | {mark} accept
        iifname != "{tun}" oifname "{tun}" ct state established,related accept
        iifname != "{tun}" oifname "{tun}" drop
{nl.join(others) if others else "        # the host forwarded before the gateway started: its other forwarding is its own"}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
{nl.join(masq)}
    }}
}}
"""


def _replace_script(family: str, name: str, definition: str) -> str:
    # 'table X' creates it if missing, so the 'delete' never fails; all in one transaction.
    return f"table {family} {name}\ndelete table {family} {name}\n{definition}"


def apply_gateway(tun: str, tunnel_prefixes: str | list[str], upstream_interface: str,
                  netns: str | None = None, exclusive: tuple[str, ...] = (),
                  listen_port: int | None = None, inits_per_source_s: int = 10) -> str:
    """Create or replace the gateway table; returns its name."""
    definition = gateway_ruleset(tun, tunnel_prefixes, upstream_interface, exclusive, listen_port,
                                 inits_per_source_s)
    name = table_name(tun)
    nft(script=_replace_script(FAMILY, name, definition), netns=netns,
        what=f"applying nft table {FAMILY} {name}")
    return name


def killswitch_table_name(tun: str) -> str:
    return table_name(tun).replace("tunnelgate_", "tunnelgate_ks_", 1)


def killswitch_ruleset(tun: str, routes_: list[str], endpoints: list[tuple[str, int]],
                       connected: list[str] = ()) -> str:
    """The client's kill switch: what the tunnel routes (``routes_``) may leave only
    through the TUN, except the tunnel's own UDP to the gateway ``endpoints``,
    DHCP (so the link keeps its address), IPv6 neighbour discovery and the
    ``connected`` networks (the LAN: its routes are more specific than the tunnel's,
    so it never went through the tunnel either). It stays
    when the daemon dies (the TUN and its routes vanish with the process; the
    table does not), so traffic is blocked, not sent in plain."""
    _check_ifname(tun, "tun")
    nets = _prefixes(routes_)
    allow = []
    for host, port in endpoints:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError as exc:
            raise NetError(f"bad gateway endpoint address {host!r}: {exc}") from exc
        if not isinstance(port, int) or not 0 < port < 65536:
            raise NetError(f"bad gateway endpoint port {port!r}")
        allow.append(f"        {'ip' if ip.version == 4 else 'ip6'} daddr {ip} udp dport {port} accept")
    for net in _prefixes(list(connected)):
        allow.append(f"        {'ip' if net.version == 4 else 'ip6'} daddr {net} accept")
    allow.append("        udp sport 68 udp dport 67 accept")
    if any(n.version == 6 for n in nets):
        allow.append("        udp sport 546 udp dport 547 accept")
        allow.append("        icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept")
    block = []
    for net in nets:
        fam = "ipv4" if net.version == 4 else "ipv6"
        if net.prefixlen == 0:
            block.append(f"        meta nfproto {fam} drop")
        else:
            block.append(f"        {'ip' if net.version == 4 else 'ip6'} daddr {net} drop")
    body = "\n".join([f'        oifname {{ "lo", "{tun}" }} accept', *allow, *block])
    t = killswitch_table_name(tun)
    return f"""table {FAMILY} {t} {{
    chain output {{
        type filter hook output priority filter; policy accept;
{body}
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
{body}
    }}
}}
"""


def apply_killswitch(tun: str, routes_: list[str], endpoints: list[tuple[str, int]],
                     connected: list[str] = (), netns: str | None = None) -> str:
    """Create or replace the client's kill switch table; returns its name."""
    definition = killswitch_ruleset(tun, routes_, endpoints, connected)
    name = killswitch_table_name(tun)
    nft(script=_replace_script(FAMILY, name, definition), netns=netns,
        what=f"applying nft table {FAMILY} {name}")
    return name


def srcnat_table_name(tun: str) -> str:
    return table_name(tun).replace("tunnelgate_", "tunnelgate_sn_", 1)


def srcnat_ruleset(tun: str, own: list[str], routes_: list[tuple[str, str]]) -> str:
    """A client's source translation per gateway: its TUN has one address per family
    (``own``, the first gateway's lease), another gateway may have leased it another.
    ``routes_``: (destination prefix, the address its gateway leased us), host
    destinations before the default routes (the order the client's router decides in:
    a host destination is never also a default). A packet leaving through ``tun``
    from an own address to a destination whose gateway leased another gets that one as
    its source; a packet arriving on ``tun`` for one of those addresses gets the own
    address back before conntrack sees it. Stateless (payload rewrites, the kernel
    fixes the IP and L4 checksums), so a destination that moves is translated from its
    next packet on, with no conntrack binding left over.

    At postrouting, after NAT (priority 110): what the host sends and what a relay
    forwards into ``tun`` (its buyers' packets, masqueraded to the TUN's own address at
    srcnat) alike; at the output hook, as this was first, a relay's forwarded packets were
    never translated, and after its market moved D to an upstream that leased another
    address that upstream dropped them as spoofed. Conntrack has recorded the own address
    either way; the replies get it back at prerouting before conntrack looks."""
    _check_ifname(tun, "tun")
    owns = {ipaddress.ip_address(a).version: ipaddress.ip_address(a) for a in own}
    out, back, seen = [], [], set()
    for dest, addr in routes_:
        net, ip = ipaddress.ip_network(dest, strict=False), ipaddress.ip_address(addr)
        me = owns.get(net.version)
        if me is None or ip.version != net.version:
            raise NetError(f"source translation for {dest}: {addr} is not of its family or no own address")
        fam = "ip" if net.version == 4 else "ip6"
        match = "" if net.prefixlen == 0 else f"{fam} daddr {net} "
        if ip == me:
            if net.prefixlen:
                out.append(f"        {match}accept")
            continue
        out.append(f"        {match}{fam} saddr {me} {fam} saddr set {ip} accept")
        if ip not in seen:
            seen.add(ip)
            back.append(f'        iifname "{tun}" {fam} daddr {ip} {fam} daddr set {me}')
    t = srcnat_table_name(tun)
    body = "\n".join(out)
    return f"""table {FAMILY} {t} {{
    chain postrouting {{
        type filter hook postrouting priority 110; policy accept;
        oifname != "{tun}" accept
{body}
    }}
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
{chr(10).join(back)}
    }}
}}
"""


def apply_srcnat(tun: str, own: list[str], routes_: list[tuple[str, str]], netns: str | None = None) -> str:
    """Create or replace the client's source translation table; returns its name."""
    name = srcnat_table_name(tun)
    nft(script=_replace_script(FAMILY, name, srcnat_ruleset(tun, own, routes_)), netns=netns,
        what=f"applying nft table {FAMILY} {name}")
    return name


def table_exists(name: str, family: str = FAMILY, netns: str | None = None) -> bool:
    _check_table(name)
    out = nft(["list", "tables", family], netns=netns, what="listing nft tables")
    return any(line.split()[-1:] == [name] for line in out.splitlines())


def remove_table(name: str, family: str = FAMILY, netns: str | None = None) -> bool:
    """Delete exactly this table; fine if it does not exist. True if it existed."""
    _check_table(name)
    if family not in ("inet", "ip", "ip6", "arp", "bridge", "netdev"):
        raise NetError(f"bad nft family {family!r}")
    existed = table_exists(name, family, netns)
    nft(script=f"table {family} {name}\ndelete table {family} {name}\n", netns=netns,
        what=f"deleting nft table {family} {name}")
    return existed


def list_ruleset(netns: str | None = None) -> str:
    return nft(["list", "ruleset"], netns=netns, what="listing the nft ruleset")


# -- counters for tests -------------------------------------------------------

def counter_table(name: str, iface: str, netns: str | None = None) -> str:
    """(Re)create table ``inet NAME`` counting packets/bytes that leave (``tx``,
    postrouting oifname) and enter (``rx``, prerouting iifname) ``iface``.
    Counts are nft's packet length: the IP packet (inner bytes) on a TUN,
    the IP packet without the Ethernet header on a veth."""
    _check_table(name)
    _check_ifname(iface, "counted")
    definition = f"""table {FAMILY} {name} {{
    counter tx {{ }}
    counter rx {{ }}
    chain out {{
        type filter hook postrouting priority -300; policy accept;
        oifname "{iface}" counter name "tx"
    }}
    chain in {{
        type filter hook prerouting priority -300; policy accept;
        iifname "{iface}" counter name "rx"
    }}
}}
"""
    nft(script=_replace_script(FAMILY, name, definition), netns=netns,
        what=f"creating counter table {FAMILY} {name}")
    return name


def read_counters(name: str, netns: str | None = None) -> dict[str, int]:
    """{'tx_packets', 'tx_bytes', 'rx_packets', 'rx_bytes'} of a counter_table()."""
    _check_table(name)
    out = nft(["-j", "list", "counters", "table", FAMILY, name], netns=netns,
              what=f"reading counters of {FAMILY} {name}")
    result: dict[str, int] = {}
    try:
        for item in json.loads(out)["nftables"]:
            c = item.get("counter")
            if c and c.get("table") == name:
                result[f"{c['name']}_packets"] = int(c["packets"])
                result[f"{c['name']}_bytes"] = int(c["bytes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise NetError(f"unexpected nft JSON for counters of {name}: {exc}: {out[:200]!r}") from exc
    if "tx_bytes" not in result or "rx_bytes" not in result:
        raise NetError(f"table {FAMILY} {name} has no tx/rx counters: create it with counter_table()")
    return result
