"""TOML configuration → frozen dataclasses.

Every error names the file, the key and what was expected, because the person
reading it is editing that file right now.

Over 600 lines: one reader and one check per key of both roles' files; splitting by table
would scatter the shared reader and its messages.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from tunnelgate import money
from tunnelgate.config_market import Advertise, Choice, Discovery, GatewaySpec, advertise
from tunnelgate import config_market
from tunnelgate.payment_backends import BACKENDS
from tunnelgate.protocol.messages import MAX_U32
from tunnelgate.protocol.buyer import ClientPolicy
from tunnelgate.protocol.seller import Pricing
from tunnelgate.session import CIPHERS, SessionError, Timing
from tunnelgate.wakeups import KEEP_WARM_S


class ConfigError(Exception):
    pass


IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")

# Bounds a value must meet to work, not merely to load.  Sizes and durations the gateway
# proposes go on the wire as u32 (protocol.messages); the session timers live inside one
# transport key (session.Timing, see _session); anything else that is a duration is
# capped at a day, far beyond any use and well inside what a poll/wait timeout carries.
MAX_ROUND = 255                 # messages.Propose.round
MAX_DURATION_S = 86400.0
MAX_CONFIRMATIONS = 1000
MAX_FEE_RATE = Decimal(10000)   # sat/vB: bitcoind's default maxfeerate refuses more


@dataclass(frozen=True)
class Node:
    private_key_file: Path
    state_dir: Path


@dataclass(frozen=True)
class SessionSettings:
    """``[session]``.  The timers are a ``session.Timing`` itself, so the session's own
    definition (fields, defaults, invariants) is the only one and the daemons pass it on."""
    timing: Timing = field(default_factory=Timing)
    cipher: str = "auto"    # client: transport AEAD; "auto" = AES-GCM where the CPU has AES
    keep_warm_s: float = KEEP_WARM_S    # data threads wake often this long after a packet (wakeups.Warmth)
    # gateway: INITs one source address may send per second (nft) and key exchanges it may ask for
    handshakes_per_source_s: int = 10


@dataclass(frozen=True)
class Payment:
    """``[payment]``: the backend's name and its settings (backend-specific keys, validated
    per backend and role; paths already resolved relative to the config file).

    ``settings`` is a sorted tuple of (key, value) pairs (lists become tuples) so the
    config stays frozen and hashable; ``settings_dict()`` gives the dict that
    ``payments.load_backend`` takes.  ``prepay_msat``/``low_balance_msat`` are client-only
    (0 on a gateway)."""
    backend: str = "dummy"
    settings: tuple[tuple[str, Any], ...] = ()
    prepay_msat: int = 0
    low_balance_msat: int = 0

    def settings_dict(self) -> dict[str, Any]:
        return dict(self.settings)

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings_dict().get(key, default)


DEFAULT_LEASE_IDLE_S = 600.0
MIN_LEASE_IDLE_S = 30.0         # three client keepalives (session.Timing.keepalive_s)
DEFAULT_USER = "tunnelgate"     # created by scripts/setup; "root" keeps root
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")

DEFAULT_PRICE = "0.5"        # msat per KB, when [pricing] default_price is omitted
DEFAULT_MAX_PRICE = "1"      # msat per KB, when [policy] max_price is omitted


def _default_pricing() -> Pricing:
    p = money.parse_price(DEFAULT_PRICE)
    return Pricing(default_price=p, floor_price=p)


def _default_policy() -> ClientPolicy:
    return ClientPolicy(max_price=money.parse_price(DEFAULT_MAX_PRICE))


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    node: Node
    listen: tuple[str, int]
    tun: str
    address: ipaddress.IPv4Interface
    upstream_interface: str
    mtu: int
    session: SessionSettings = field(default_factory=SessionSettings)
    pricing: Pricing = field(default_factory=_default_pricing)
    payment: Payment = field(default_factory=Payment)
    metrics_listen: tuple[str, int] | None = None   # [metrics] listen: Prometheus text format
    role: str = "gateway"
    address6: ipaddress.IPv6Interface | None = None  # IPv6 in the tunnel as well (dual stack)
    lease_idle_s: float = DEFAULT_LEASE_IDLE_S      # [network]: an idle peer's address is reclaimed
    user: str = DEFAULT_USER                         # [daemon]: who the daemon runs as after set-up
    advertise: Advertise = field(default_factory=Advertise)   # [advertise]: the signed advert, mDNS
    # a relay (docs/relay.md): [upstream] is the client config of its uplink, [pricing] margin
    # the fraction it adds to the upstream price ("0.25": 25 %)
    upstream: "ClientConfig | None" = None
    margin: str = "0"
    fee: int = 0            # [pricing] fee: a relay's price units per KB after the margin


@dataclass(frozen=True)
class ClientConfig:
    path: Path
    node: Node
    endpoint: tuple[str, int] | None          # the first configured gateway's (None: mDNS only)
    gateway_public_key: bytes | None
    tun: str
    routes: tuple[str, ...]
    mtu: int
    session: SessionSettings = field(default_factory=SessionSettings)
    policy: ClientPolicy = field(default_factory=_default_policy)
    payment: Payment = field(default_factory=Payment)
    role: str = "client"
    kill_switch: bool = False     # [network] kill_switch; default on for full-tunnel routes
    metrics_listen: tuple[str, int] | None = None   # [metrics] listen: Prometheus text format
    user: str = DEFAULT_USER                         # [daemon]: who the daemon runs as after set-up
    gateways: tuple[GatewaySpec, ...] = ()          # [gateway] and [[gateways]]
    discovery: Discovery = field(default_factory=Discovery)   # [discovery]: mDNS
    choice: Choice = field(default_factory=Choice)            # [choice]: switch margin, failover


class _Reader:
    """Walks one TOML table, remembering which keys were used so leftovers
    (typos) can be reported instead of silently ignored."""

    def __init__(self, path: Path, data: dict, prefix: str = ""):
        self.path, self.data, self.prefix = path, data, prefix
        self.used: set[str] = set()

    def error(self, key: str, expected: str, got: Any = None) -> ConfigError:
        where = f"{self.path}: key '{self.prefix}{key}'"
        if got is None:
            return ConfigError(f"{where}: {expected}")
        return ConfigError(f"{where}: expected {expected}, got {got!r}")

    def table(self, key: str, required: bool = True) -> "_Reader":
        self.used.add(key)
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.error(key, "missing table; add a [" + self.prefix + key + "] section")
            value = {}
        if not isinstance(value, dict):
            raise self.error(key, "a table", value)
        return _Reader(self.path, value, f"{self.prefix}{key}.")

    def get(self, key: str, kind: type | tuple, expected: str, default: Any = ...):
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self.error(key, f"missing; expected {expected}")
            return default
        value = self.data[key]
        if isinstance(value, str) and value.lstrip("<").startswith("REPLACE"):
            # the shipped examples and `config import` mark what a user must write in
            raise self.error(key, f"fill in {expected}: this is still the example's placeholder {value!r}")
        if isinstance(value, bool) and kind is not bool:
            raise self.error(key, expected, value)
        if not isinstance(value, kind):
            raise self.error(key, expected, value)
        return value

    def path_value(self, key: str) -> Path:
        raw = self.get(key, str, "a file or directory path (relative to the config file)")
        p = Path(raw).expanduser()
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def endpoint(self, key: str) -> tuple[str, int]:
        raw = self.get(key, str, '"ADDRESS:PORT", e.g. "198.18.1.1:51900"')
        host, sep, port = raw.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise self.error(key, '"ADDRESS:PORT" with a port 1-65535', raw)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise self.error(key, "an IP address (host names are not resolved)", raw) from None
        return host, int(port)

    def ifname(self, key: str, default: Any = ...) -> str:
        raw = self.get(key, str, "an interface name (1-15 of A-Z a-z 0-9 _ . -)", default)
        if not IFNAME.match(raw):
            raise self.error(key, "an interface name (1-15 of A-Z a-z 0-9 _ . -)", raw)
        return raw

    def number(self, key: str, default: float, minimum: float = 0.0, maximum: float = MAX_DURATION_S,
               why: str = "", min_inclusive: bool = False) -> float:
        """A finite number of seconds in (minimum, maximum] ([minimum, maximum] with
        min_inclusive); `why` says where a bound comes from."""
        low = f">= {minimum:g}" if min_inclusive else f"greater than {minimum:g}"
        what = f"a number of seconds {low} and at most {maximum:g}" + (f" ({why})" if why else "")
        value = self.get(key, (int, float), what, default)
        # compared before float(): an over-long TOML integer would overflow it
        if (isinstance(value, float) and not math.isfinite(value)) or value > maximum or \
                value < minimum or (value == minimum and not min_inclusive):
            raise self.error(key, what, value)
        return float(value)

    def integer(self, key: str, default: Any, minimum: int = 0, maximum: int | None = None,
                unit: str = "", why: str = "") -> int:
        what = f"a whole number{' of ' + unit if unit else ''} >= {minimum}"
        if maximum is not None:
            what += f" and at most {maximum}" + (f" ({why})" if why else "")
        value = self.get(key, (int, float), what, default)
        if isinstance(value, float) or value < minimum or (maximum is not None and value > maximum):
            raise self.error(key, what, value)
        return value

    def boolean(self, key: str, default: Any = ...) -> bool:
        return self.get(key, bool, "true or false", default)

    def _no_float(self, key: str, example: str) -> None:
        value = self.data.get(key)
        if isinstance(value, float):
            raise self.error(key, f"expected a decimal string, got the float {value!r}: floats are not "
                                  f"exact, write it in quotes: {key} = \"{example}\"")

    def price(self, key: str, default: Any = ...) -> int:
        """msat per KB, as a decimal string ("0.5") or an integer -> price units (money.py)."""
        self._no_float(key, _float_text(self.data.get(key)))
        value = self.get(key, (str, int), 'a price in msat per KB as a decimal string, e.g. "0.5"',
                         default)
        try:
            return money.parse_price(value)
        except money.MoneyError as e:
            raise self.error(key, f"a price in msat per KB as a decimal string, e.g. \"0.5\" ({e})",
                             value) from None

    def msat(self, key: str, default: Any = ...) -> int | None:
        """An amount in msat: an integer (or "12 sat"); None when omitted with default None."""
        self._no_float(key, _float_text(self.data.get(key)))
        value = self.get(key, (str, int), 'an amount in msat (an integer, or a string like "12 sat")',
                         default)
        if value is None:
            return None
        try:
            return money.parse_msat(value)
        except money.MoneyError as e:
            raise self.error(key, f"an amount in msat, a whole number ({e})", value) from None

    def fraction(self, key: str, default: str) -> str:
        """An exact fraction 0..1 as a decimal string; returned normalized ("0.80" -> "0.8")."""
        self._no_float(key, _float_text(self.data.get(key)))
        value = self.get(key, (str, int), 'a fraction from 0 to 1 as a decimal string, e.g. "0.8"', default)
        try:
            num, den = money.parse_fraction(value, key)
        except money.MoneyError as e:
            raise self.error(key, f'a fraction from 0 to 1 as a decimal string, e.g. "0.8" ({e})',
                             value) from None
        if num > den:
            raise self.error(key, 'a fraction from 0 to 1 as a decimal string, e.g. "0.8"', value)
        d = Decimal(num) / Decimal(den)
        text = format(d.normalize(), "f")
        return text

    def tables(self, key: str) -> list["_Reader"]:
        """An array of tables ([[prefix.key]]); readers prefixed ``key[1].``, ``key[2].`` …"""
        value = self.get(key, list, f"an array of tables, written as [[{self.prefix}{key}]] sections", [])
        out = []
        for i, item in enumerate(value, 1):
            if not isinstance(item, dict):
                raise self.error(f"{key}[{i}]", f"a table, written as a [[{self.prefix}{key}]] section", item)
            out.append(_Reader(self.path, item, f"{self.prefix}{key}[{i}]."))
        return out

    def element(self, key: str, index: int, value: Any) -> tuple["_Reader", str]:
        """A reader over one element of a list (``key[index]``, 1-based in messages), to check
        it with the same rules and messages as a single value."""
        name = f"{key}[{index + 1}]"
        return _Reader(self.path, {name: value}, self.prefix), name

    def finish(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise self.error(extra[0], "unknown key; check the spelling against conf/*.toml")


def _float_text(value: Any) -> str:
    """How a float the user wrote should look in quotes (0.5 -> "0.5", 1e-07 -> "0.0000001")."""
    if not isinstance(value, float):
        return "0.5"
    try:
        return format(Decimal(repr(value)).normalize(), "f")
    except ArithmeticError:
        return repr(value)


def _load_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; pass -c with the path of your config "
                          "(examples in conf/)") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied; run as root or fix the file's mode") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def _node(r: _Reader) -> Node:
    t = r.table("node")
    node = Node(private_key_file=t.path_value("private_key_file"), state_dir=t.path_value("state_dir"))
    # the daemon creates state_dir when missing; something else in its place it cannot use
    if node.state_dir.exists() and not node.state_dir.is_dir():
        raise t.error("state_dir", f"a directory (created if missing), but {node.state_dir} exists and is "
                                   "not one; point state_dir at a directory or remove that file")
    if node.private_key_file.is_dir():
        raise t.error("private_key_file", f"a key file, but {node.private_key_file} is a directory; "
                                          "create one with `tunnelgate keygen --out FILE`")
    t.finish()
    return node


def _session(r: _Reader) -> SessionSettings:
    key_life, ack = Timing.reject_after_s, Timing.ack_after_s   # what the session requires
    t = r.table("session", required=False)
    d, dt = SessionSettings(), Timing()
    life = f"a transport key lives {key_life:g} s, so a longer timer never fires"
    timers = dict(
        keepalive_s=t.number("keepalive_s", dt.keepalive_s, maximum=key_life, why=life),
        # below the key's lifetime, or the key dies before the client replaces it
        rekey_after_s=t.number("rekey_after_s", dt.rekey_after_s, maximum=key_life - 1,
                               why=f"a new key must be agreed before the old one expires at "
                                   f"{key_life:g} s"),
        # above the gateway's ack delay, or a quiet but live gateway looks dead
        dead_after_s=t.number("dead_after_s", dt.dead_after_s, minimum=ack, maximum=key_life,
                              why=f"the gateway answers within {ack:g} s, so less would "
                                  f"take a live gateway for dead; {life}"),
        handshake_retry_s=t.number("handshake_retry_s", dt.handshake_retry_s, maximum=key_life,
                                   why=life),
    )
    try:
        timing = Timing(**timers)
    except SessionError as e:   # the bounds above should make this unreachable; name the table if not
        raise ConfigError(f"{t.path}: [session]: {e}; change these timers") from None
    s = SessionSettings(
        timing=timing,
        cipher=t.get("cipher", str, '"auto", "chacha" or "aesgcm"', d.cipher),
        keep_warm_s=t.number("keep_warm_s", d.keep_warm_s, min_inclusive=True,
                             why="0: the data threads never stay warm"),
        handshakes_per_source_s=int(t.number("handshakes_per_source_s", d.handshakes_per_source_s,
                                             minimum=1, maximum=1_000_000,
                                             why="a client retries its handshake once a second")),
    )
    if s.cipher not in CIPHERS:
        raise t.error("cipher", f"one of {', '.join(repr(c) for c in CIPHERS)}", s.cipher)
    t.finish()
    return s


def _mtu(t: _Reader) -> int:
    mtu = t.get("mtu", int, "an integer MTU between 1280 and 9000", 1420)
    if not 1280 <= mtu <= 9000:
        raise t.error("mtu", "an integer MTU between 1280 and 9000", mtu)
    return mtu


def decode_key(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if len(raw) != 32:
        raise ValueError(f"{len(raw)} bytes, expected 32")
    return raw


def is_low_order(public: bytes) -> bool:
    """True for an X25519 public key of small order (all zero among them): every key
    agreement with it gives the all-zero secret, so no handshake can be authenticated."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    # any fixed private key will do: a small-order point times any clamped scalar is zero
    probe = X25519PrivateKey.from_private_bytes(bytes([0x40] * 32))
    try:
        probe.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:      # cryptography refuses an all-zero shared secret
        return True
    return False


def load(path: str | Path) -> GatewayConfig | ClientConfig:
    """Loads either role; a file with [link] is a gateway, one with [gateway] a client."""
    path = Path(path).resolve()
    data = _load_toml(path)
    client = "gateway" in data or "gateways" in data or "discovery" in data
    if "link" in data and client:
        raise ConfigError(f"{path}: has both [link] (gateway) and [gateway] (client) sections; "
                          "a config describes one daemon")
    if "link" in data:
        return _gateway(path, data)
    if client:
        return _client(path, data)
    raise ConfigError(f"{path}: neither a gateway config (needs [link]) nor a client config "
                      "(needs [gateway], [[gateways]] or [discovery]); see conf/gateway.toml and conf/client.toml")


def _gateway(path: Path, data: dict) -> GatewayConfig:
    r = _Reader(path, data)
    node = _node(r)
    link = r.table("link")
    listen = link.endpoint("listen")
    link.finish()
    net = r.table("network")
    tun = net.ifname("tun", "tgs0")
    raw = net.get("address", str, 'an IPv4 interface address with prefix, e.g. "100.64.0.1/24"')
    try:
        address = ipaddress.IPv4Interface(raw)
    except ValueError:
        raise net.error("address", 'an IPv4 address with prefix, e.g. "100.64.0.1/24"', raw) from None
    if address.network.prefixlen > 30:
        raise net.error("address", "a prefix of /30 or shorter so clients can get addresses", raw)
    address6 = _address6(net, address)
    relay = "upstream" in data
    if relay and "upstream_interface" in net.data:
        raise net.error("upstream_interface", "nothing for a relay: its traffic leaves through its "
                        "[upstream.network] tun; remove upstream_interface")
    upstream = net.ifname("upstream_interface") if not relay else ""
    mtu = _mtu(net)
    lease_idle_s = net.number("lease_idle_s", DEFAULT_LEASE_IDLE_S, minimum=MIN_LEASE_IDLE_S,
                              min_inclusive=True, why="a connected client is silent at most 10 s "
                              "between keepalives; shorter would take addresses from live clients")
    net.finish()
    session = _session(r)
    payment = _payment(r, "payee")
    margin, fee = _resale_pricing(r, relay)
    pricing = _pricing(r, (payment.backend,))
    metrics_listen = _metrics(r)
    user = _daemon(r)
    adv = advertise(r, listen)
    up = _upstream(r, node, user, tun) if relay else None
    r.finish()
    return GatewayConfig(path=path, node=node, listen=listen, tun=tun, address=address,
                         upstream_interface=up.tun if up else upstream, mtu=mtu, session=session,
                         pricing=pricing, payment=payment, metrics_listen=metrics_listen,
                         address6=address6, lease_idle_s=lease_idle_s, user=user, advertise=adv,
                         upstream=up, margin=margin, fee=fee)


def _resale_pricing(r: _Reader, relay: bool) -> tuple[str, int]:
    """[pricing] margin and fee: what a relay adds to its upstream price (a fraction of it, as a
    decimal string, then a price per KB); the rest of [pricing] is read by _pricing."""
    t = r.table("pricing", required=False)
    keys = [k for k in ("margin", "fee") if k in t.data]
    if not relay:
        if keys:
            raise t.error(keys[0], "nothing for a gateway with its own uplink: it is added to an upstream "
                                   "price, so add an [upstream] table (a relay, docs/relay.md) or remove it")
        return "0", 0
    margin = "0.25"
    if "margin" in t.data:
        t._no_float("margin", _float_text(t.data.get("margin")))
        margin = t.get("margin", str, 'a fraction of the upstream price as a decimal string, e.g. "0.25"')
        try:
            money.parse_fraction(margin, "margin")
        except money.MoneyError as e:
            raise t.error("margin", f'a fraction of the upstream price as a decimal string, e.g. "0.25" ({e})',
                          margin) from None
    fee = t.price("fee", 0)
    for k in keys:      # read here: _pricing's check for unknown keys must not see them
        del r.data["pricing"][k]
    return margin, fee


def _upstream(r: _Reader, node: Node, user: str, tun: str) -> "ClientConfig":
    """[upstream]: what a client config holds (gateways or discovery, policy, payment,
    network), the relay's uplink. Its state is under state_dir/upstream; no kill switch (the
    relay's own link to its buyers must stay open)."""
    up = r.table("upstream")
    for key in ("node", "daemon", "metrics"):
        if key in up.data:
            raise up.error(key, f"not in [upstream]: the relay's own [{key}] holds it")
    cfg = _client_body(up, Node(node.private_key_file, node.state_dir / "upstream"), user, relay=True)
    if cfg.tun == tun:
        raise up.error("network.tun", f"a TUN name other than the relay's own [network] tun ({tun!r})", cfg.tun)
    return cfg


def check_interfaces(cfg: GatewayConfig) -> None:
    """What config load cannot know: that upstream_interface exists in the network
    namespace `serve` runs in (else NAT has no way out and every client gets nothing)."""
    import socket
    if cfg.upstream is not None:
        return      # a relay's upstream_interface is its own upstream TUN, made at start
    try:
        socket.if_nametoindex(cfg.upstream_interface)
    except OSError:
        raise ConfigError(f"{cfg.path}: key 'network.upstream_interface': there is no interface "
                          f"{cfg.upstream_interface!r} in this network namespace; set it to the "
                          "interface that leads to the internet (see `ip link`)") from None


def _address6(net: "_Reader", address: ipaddress.IPv4Interface) -> ipaddress.IPv6Interface | None:
    """A peer's IPv6 address is its IPv4 host number in this prefix, so it needs no
    allocation of its own and stays stable per key; the gateway's host numbers must
    match for the same reason (else a peer could be given the gateway's address)."""
    if "address6" not in net.data:
        return None
    example = f'e.g. "fd64:7467::{int(address.ip) - int(address.network.network_address)}/64"'
    raw = net.get("address6", str, f"an IPv6 interface address with prefix, {example}")
    try:
        if "/" not in raw:
            raise ValueError(raw)
        address6 = ipaddress.IPv6Interface(raw)
    except ValueError:
        raise net.error("address6", f"an IPv6 address with prefix, {example}", raw) from None
    host_bits4 = 32 - address.network.prefixlen
    if 128 - address6.network.prefixlen < host_bits4:
        raise net.error("address6", f"a prefix with at least {host_bits4} host bits (/{128 - host_bits4} "
                        f"or shorter), as many as the IPv4 prefix has, so every client gets one", raw)
    host4 = int(address.ip) - int(address.network.network_address)
    host6 = int(address6.ip) - int(address6.network.network_address)
    if host4 != host6:
        raise net.error("address6", f"the same host number as address {address.ip} ({host4}), {example}: "
                        "clients' IPv6 addresses are their IPv4 host numbers in this prefix", raw)
    return address6


def peer_address6(address: ipaddress.IPv4Interface, address6: ipaddress.IPv6Interface,
                  peer_ip: str) -> ipaddress.IPv6Address:
    """The IPv6 address matching a peer's IPv4 tunnel address (see _address6)."""
    host = int(ipaddress.IPv4Address(peer_ip)) - int(address.network.network_address)
    return address6.network.network_address + host


def _daemon(r: _Reader) -> str:
    """[daemon] user: the account the daemon drops to once its TUN, routes and nft table
    are set up (daemon/privilege.py); "root" keeps root."""
    t = r.table("daemon", required=False)
    user = t.get("user", str, 'a system user name (default "tunnelgate", made by scripts/setup; '
                              '"root" keeps root)', DEFAULT_USER)
    if not _USER_NAME.fullmatch(user):
        raise t.error("user", 'a user name such as "tunnelgate" (lower case letters, digits, _ and -)', user)
    t.finish()
    return user


def _metrics(r: _Reader) -> tuple[str, int] | None:
    """[metrics] listen: where to serve Prometheus text (both roles)."""
    metrics = r.table("metrics", required=False)
    listen = metrics.endpoint("listen") if "listen" in metrics.data else None
    metrics.finish()
    return listen


def _gateway_key(gw: "_Reader", key: str) -> bytes:
    key_text = gw.get(key, str, "the gateway's public key (base64, from `tunnelgate pubkey`)")
    try:
        public_key = decode_key(key_text)
    except ValueError as e:
        raise gw.error(key, f"a base64 X25519 public key (32 bytes): {e}", key_text) from None
    if is_low_order(public_key):
        raise gw.error(key, "the gateway's real public key (from `tunnelgate pubkey` on the "
                            "gateway); this one is a small-order point (e.g. all zero) no "
                            "handshake can use", key_text)
    return public_key


def _client(path: Path, data: dict) -> ClientConfig:
    r = _Reader(path, data)
    return _client_body(r, _node(r))


def _client_body(r: _Reader, node: Node, user: str | None = None, relay: bool = False) -> ClientConfig:
    """A client's tables (a client file's, or a relay's [upstream]: ``relay``, ``user`` given)."""
    path = r.path
    # [gateway] is the one-gateway case of [[gateways]]; with [discovery] mdns a client
    # may know none ahead (config_market.py)
    gateways = config_market.gateways(r, _gateway_key)
    discovery = config_market.discovery(r)
    choice = config_market.choice(r)
    if not gateways and not discovery.mdns:
        raise r.error("gateway", "a gateway to buy from: a [gateway] or [[gateways]] table (endpoint, "
                                 "public_key), or [discovery] mdns = true with interfaces to find them on")
    net = r.table("network")
    tun = net.ifname("tun", "tg0")
    routes_raw = net.get("routes", list, 'a list of prefixes, e.g. ["0.0.0.0/0"]', ["0.0.0.0/0"])
    routes = []
    for item in routes_raw:
        try:
            routes.append(str(ipaddress.ip_network(item, strict=True)))
        except (ValueError, TypeError):
            raise net.error("routes", 'a list of network prefixes like "0.0.0.0/0" or "198.18.2.0/24"',
                            item) from None
    mtu = _mtu(net)
    full_tunnel = any(ipaddress.ip_network(p).prefixlen == 0 for p in routes)
    kill_switch = net.get("kill_switch", bool, "true or false", full_tunnel and not relay)
    if relay and kill_switch:
        raise net.error("kill_switch", "false for a relay's upstream: a kill switch would cut the relay's "
                                       "own link to the clients it sells to")
    net.finish()
    session = _session(r)
    policy = _policy(r)
    payment = _payment(r, "payer")
    metrics_listen = None if relay else _metrics(r)
    user = user if relay else _daemon(r)
    r.finish()
    first = gateways[0] if gateways else None
    return ClientConfig(path=path, node=node, endpoint=first.endpoint if first else None,
                        gateway_public_key=first.public_key if first else None,
                        gateways=gateways, discovery=discovery, choice=choice, tun=tun, routes=tuple(routes), mtu=mtu, session=session,
                        policy=policy, payment=payment, kill_switch=kill_switch,
                        metrics_listen=metrics_listen, user=user)


# --- contracts and payments ------------------------------------------------------------------

def _prefix(t: _Reader, key: str = "prefix") -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    raw = t.get(key, str, 'a network prefix, e.g. "198.18.2.0/24"')
    try:
        return ipaddress.ip_network(raw, strict=True)
    except ValueError:
        raise t.error(key, 'a network prefix like "198.18.2.0/24" (address bits after the prefix '
                           'length must be zero; a single host is "198.18.2.7/32")', raw) from None


def _scope(t: _Reader, key: str, bits: int) -> str | int:
    value = t.get(key, (str, int), f'"host" or a prefix length from 0 to {bits}', "host")
    if value == "host":
        return "host"
    if isinstance(value, str) or not 0 <= value <= bits:
        raise t.error(key, f'"host" or a prefix length from 0 to {bits}', value)
    return value


def _routes(t: _Reader, price_key: str, scopes: dict[int, str | int] | None = None,
            ) -> tuple[tuple[str, int], ...]:
    """[[X.route]] tables: prefix + a price (``price_key``)."""
    out: list[tuple[str, int]] = []
    seen: dict[str, str] = {}
    for rt in t.tables("route"):
        net = _prefix(rt)
        price = rt.price(price_key)
        rt.finish()
        text = str(net)
        here = rt.prefix.rstrip(".")
        if text in seen:
            raise rt.error("prefix", f"each prefix at most once; {text} is also {seen[text]}")
        seen[text] = here
        if scopes:
            scope = scopes[net.version]
            if scope != "host" and net.prefixlen > scope:
                key = "scope" if net.version == 4 else "scope6"
                raise rt.error("prefix", f"a prefix of /{scope} or shorter: {t.prefix}{key} = {scope} "
                                         f"makes one contract cover a whole /{scope}, so {text} cannot "
                                         "have a price of its own", text)
        out.append((text, price))
    return tuple(out)


def _pricing(r: _Reader, methods: tuple[str, ...]) -> Pricing:
    t = r.table("pricing", required=False)
    d = Pricing(default_price=0, floor_price=0)
    default_price = t.price("default_price", DEFAULT_PRICE)
    floor_price = t.price("floor_price") if "floor_price" in t.data else default_price
    if floor_price > default_price:
        raise t.error("floor_price", f"at most default_price ({money.format_price(default_price)}): "
                                     "the floor is the lowest price a counter-offer can get",
                      t.data.get("floor_price"))
    scope = _scope(t, "scope", 32)
    scope6 = _scope(t, "scope6", 128)
    wire = MAX_U32
    w = "the most a PROPOSE can carry"
    grace_kb = t.integer("grace_kb", d.grace_kb, 0, wire, unit="KB (1 KB = 1000 bytes)", why=w)
    contract_kb = t.integer("contract_kb", d.contract_kb, 1, wire, unit="KB (1 KB = 1000 bytes)", why=w)
    pricing = Pricing(
        default_price=default_price,
        floor_price=floor_price,
        prefix_prices=_routes(t, "price", {4: scope, 6: scope6}),
        contract_kb=contract_kb,
        max_contract_kb=t.integer("max_contract_kb", max(d.max_contract_kb, contract_kb), contract_kb, wire,
                                  unit="KB (1 KB = 1000 bytes), at least contract_kb", why=w),
        contract_time_s=t.integer("contract_time_s", d.contract_time_s, 1, wire, unit="seconds", why=w),
        grace_time_s=t.integer("grace_time_s", d.grace_time_s, 0, wire, unit="seconds", why=w),
        grace_kb=grace_kb,
        # all strangers' (keys that never paid) grace together: 4 grace_kb a minute unless set
        strangers_kb_per_min=t.integer("strangers_kb_per_min", 4 * grace_kb, 0, MAX_U32,
                                       unit="KB a minute (1 KB = 1000 bytes) that all peers that never "
                                            "paid may use unpaid together; 0: they pay first"),
        scope=scope,
        scope6=scope6,
        payment_methods=methods,
        account="",
        max_rounds=t.integer("max_rounds", d.max_rounds, 1, MAX_ROUND, why=w),
        no_deal_backoff_s=t.integer("no_deal_backoff_s", d.no_deal_backoff_s, 0, wire, unit="seconds",
                                    why="the most a NO_DEAL can carry"),
        no_upstream_backoff_s=t.integer("no_upstream_backoff_s", d.no_upstream_backoff_s, 1, wire, unit="seconds",
                                        why="the most a NO_DEAL can carry"),
        proposal_timeout_s=t.integer("proposal_timeout_s", d.proposal_timeout_s, 1, int(MAX_DURATION_S),
                                     unit="seconds"),
    )
    _check_cost(t, pricing)
    t.finish()
    return pricing


def _check_cost(t: _Reader, p: Pricing) -> None:
    """The dearest contract must cost an amount a PAY can carry (messages: amount_msat)."""
    prices = [("default_price", p.default_price)] + [
        (f"route[{i}].price", price) for i, (_, price) in enumerate(p.prefix_prices, 1)]
    key, price = max(prices, key=lambda kp: kp[1])
    cost = money.cost_msat(price, p.max_contract_kb)
    if cost > money.MAX_MSAT:
        raise t.error(key, f"a price at which a contract of max_contract_kb ({p.max_contract_kb} KB) "
                           f"costs at most {money.MAX_MSAT} msat (all bitcoin); it would cost {cost} msat: "
                           "lower the price or max_contract_kb")


def _policy(r: _Reader) -> ClientPolicy:
    t = r.table("policy", required=False)
    d = ClientPolicy(max_price=0)
    policy = ClientPolicy(
        max_price=t.price("max_price", DEFAULT_MAX_PRICE),
        prefix_max_prices=_routes(t, "max_price"),
        counter_fraction=t.fraction("counter_fraction", d.counter_fraction),
        # compared with a contract's limit_kb / time_s, which are u32 on the wire
        data_renewal_kb=t.integer("data_renewal_kb", d.data_renewal_kb, 0, MAX_U32,
                                  unit="KB (1 KB = 1000 bytes)"),
        time_renewal_s=t.integer("time_renewal_s", d.time_renewal_s, 0, MAX_U32, unit="seconds"),
        max_spend_per_hour=t.msat("max_spend_per_hour", None),
        max_spend_per_day=t.msat("max_spend_per_day", None),
        max_spend_total=t.msat("max_spend_total", None),
        usage_tolerance=t.fraction("usage_tolerance", d.usage_tolerance),
    )
    t.finish()
    return policy


# Backend settings known to config (per backend: key -> (kind, roles, required-for-roles)).
# Kinds: "msat", "bool", "path", "url", "urls", "seconds", "count", "rate".
# A backend not listed here (added to payment_backends.BACKENDS later) gets its keys passed through
# unchecked.
BOTH = ("payer", "payee")
BACKEND_SETTINGS: dict[str, dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]] = {
    "dummy": {
        "balance_msat": ("msat", ("payer",), ()),
        "fee_msat": ("msat", ("payer",), ()),
        "pending": ("bool", ("payee",), ()),
    },
    "cashu": {
        "mint_url": ("url", ("payer",), ("payer",)),
        "wallet_dir": ("path", BOTH, BOTH),
        "mints": ("urls", ("payee",), ("payee",)),
        "p2pk_key_file": ("path", ("payee",), ("payee",)),
        "redeem_timeout_s": ("seconds", ("payee",), ()),
    },
    "bitcoind": {
        "rpc_url": ("url", BOTH, BOTH),
        "rpc_timeout_s": ("seconds", BOTH, ()),
        "replaceable": ("bool", ("payer",), ()),
        "fee_rate_sat_vb": ("rate", ("payer",), ()),
        "min_confirmations": ("count", ("payee",), ()),
    },
    # rpc_url or electrum_dir (the daemon's data directory): the backend says if neither is set
    "electrum": {
        "rpc_url": ("url", BOTH, ()),
        "electrum_dir": ("path", BOTH, ()),
        "wallet": ("path", BOTH, ()),
        "rpc_timeout_s": ("seconds", BOTH, ()),
        "method": ("ln_method", ("payee",), ()),
        "invoice_msat": ("msat", ("payee",), ()),
        "invoice_expiry_s": ("seconds", ("payee",), ()),
        "min_confirmations": ("count", ("payee",), ()),
        "zeroconf_max_msat": ("msat", ("payee",), ()),
        "onchain_min_msat": ("msat", BOTH, ()),
        "max_invoice_msat": ("msat", ("payer",), ()),
        "fee_rate_sat_vb": ("rate", BOTH, ()),
    },
}
CLIENT_ONLY = ("prepay_msat", "low_balance_msat")
SIDE = {"payer": "a client", "payee": "the gateway"}


def _url(t: _Reader, key: str, value: Any, what: str) -> str:
    u = urllib.parse.urlsplit(value) if isinstance(value, str) else None
    if u is None or u.scheme not in ("http", "https") or not u.hostname:
        shown = value if key != "rpc_url" else "(not shown: it may hold a password)"
        raise t.error(key, f"{what}: an http:// or https:// URL", shown)
    return value.strip()


def _setting(t: _Reader, key: str, kind: str) -> Any:
    if kind == "msat":
        return t.msat(key)
    if kind == "bool":
        return t.boolean(key)
    if kind == "path":
        return str(t.path_value(key))
    if kind == "url":
        what = ("the mint's URL, e.g. \"http://127.0.0.1:3338\"" if key == "mint_url" else
                "the wallet's JSON-RPC URL, http://USER:PASS@HOST:PORT/wallet/NAME")
        return _url(t, key, t.get(key, str, what), what)
    if kind == "urls":
        what = 'a list of accepted mint URLs, e.g. ["http://127.0.0.1:3338"]'
        raw = t.get(key, (list, str), what)
        items = [raw] if isinstance(raw, str) else raw
        if not items:
            raise t.error(key, what + " (at least one)", raw)
        return tuple(_url(t, key, item, what) for item in items)
    if kind == "seconds":
        return float(t.number(key, 0.0))
    if kind == "count":
        return t.integer(key, ..., 0, MAX_CONFIRMATIONS)
    if kind == "ln_method":
        v = t.get(key, str, '"lightning" or "onchain"')
        if v not in ("lightning", "onchain"):
            raise t.error(key, '"lightning" or "onchain"', v)
        return v
    if kind == "rate":
        t._no_float(key, _float_text(t.data.get(key)))
        raw = t.get(key, (str, int), 'a fee rate in sat/vB as a decimal string, e.g. "2.5"')
        try:
            d = Decimal(str(raw).strip())
        except ArithmeticError:
            d = Decimal(-1)
        if not d.is_finite() or d <= 0 or d > MAX_FEE_RATE:
            raise t.error(key, f'a fee rate in sat/vB greater than 0 and at most {MAX_FEE_RATE} '
                               f'(bitcoind\'s default maxfeerate), e.g. "2.5"', raw)
        return str(raw).strip() if isinstance(raw, str) else raw
    raise AssertionError(kind)


def _payment(r: _Reader, role: str) -> Payment:
    """role: "payer" (client) or "payee" (gateway)."""
    t = r.table("payment", required=False)
    backend = t.get("backend", str, f"a payment backend name: {' | '.join(sorted(BACKENDS))}", "dummy")
    if backend not in BACKENDS:
        raise t.error("backend", f"one of {', '.join(sorted(BACKENDS))}", backend)
    prepay = low = 0
    if role == "payer":
        prepay = t.msat("prepay_msat", 0)
        low = t.msat("low_balance_msat", 0)
    else:
        for key in CLIENT_ONLY:
            if key in t.data:
                raise t.error(key, "only in a client config (the gateway does not pay)")
    known = BACKEND_SETTINGS.get(backend)
    settings: dict[str, Any] = {}
    if known is None:
        for key, value in t.data.items():
            if key not in ("backend", *CLIENT_ONLY):
                t.used.add(key)
                settings[key] = tuple(value) if isinstance(value, list) else value
    else:
        for key, (kind, roles, required) in known.items():
            if key not in t.data:
                if role in required:
                    raise t.error(key, f"missing; the {backend} backend on {SIDE[role]} needs it "
                                       f"(see docs/config.md, [payment] {backend})")
                continue
            if role not in roles:
                other = SIDE["payee" if role == "payer" else "payer"]
                raise t.error(key, f"a setting of the {backend} backend on {other} only; remove it here")
            settings[key] = _setting(t, key, kind)
        extra = sorted(set(t.data) - set(known) - {"backend", *CLIENT_ONLY})
        if extra:
            mine = sorted(k for k, (_, roles, _) in known.items() if role in roles)
            if role == "payer":
                mine += CLIENT_ONLY
            raise t.error(extra[0], f"unknown key for the {backend} backend on {SIDE[role]}; "
                                    f"known: {', '.join(['backend', *mine])}")
    t.finish()
    return Payment(backend=backend, settings=tuple(sorted(settings.items())),
                   prepay_msat=prepay, low_balance_msat=low)
