"""TOML configuration → frozen dataclasses.

Every error names the file, the key and what was expected, because the person
reading it is editing that file right now.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    pass


IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


@dataclass(frozen=True)
class Node:
    private_key_file: Path
    state_dir: Path


@dataclass(frozen=True)
class SessionTiming:
    keepalive_s: float = 10.0
    rekey_after_s: float = 120.0
    dead_after_s: float = 3.0
    handshake_retry_s: float = 1.0


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    node: Node
    listen: tuple[str, int]
    tun: str
    address: ipaddress.IPv4Interface
    upstream_interface: str
    mtu: int
    session: SessionTiming = field(default_factory=SessionTiming)
    role: str = "gateway"


@dataclass(frozen=True)
class ClientConfig:
    path: Path
    node: Node
    endpoint: tuple[str, int]
    gateway_public_key: bytes
    tun: str
    routes: tuple[str, ...]
    mtu: int
    session: SessionTiming = field(default_factory=SessionTiming)
    role: str = "client"


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

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = self.get(key, (int, float), "a number", default)
        if value <= minimum:
            raise self.error(key, f"a number greater than {minimum}", value)
        return float(value)

    def finish(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise self.error(extra[0], "unknown key; check the spelling against conf/*.toml")


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
    t.finish()
    return node


def _session(r: _Reader) -> SessionTiming:
    t = r.table("session", required=False)
    d = SessionTiming()
    s = SessionTiming(
        keepalive_s=t.number("keepalive_s", d.keepalive_s),
        rekey_after_s=t.number("rekey_after_s", d.rekey_after_s),
        dead_after_s=t.number("dead_after_s", d.dead_after_s),
        handshake_retry_s=t.number("handshake_retry_s", d.handshake_retry_s),
    )
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


def load(path: str | Path) -> GatewayConfig | ClientConfig:
    """Loads either role; a file with [link] is a gateway, one with [gateway] a client."""
    path = Path(path).resolve()
    data = _load_toml(path)
    if "link" in data and "gateway" in data:
        raise ConfigError(f"{path}: has both [link] (gateway) and [gateway] (client) sections; "
                          "a config describes one daemon")
    if "link" in data:
        return _gateway(path, data)
    if "gateway" in data:
        return _client(path, data)
    raise ConfigError(f"{path}: neither a gateway config (needs [link]) nor a client config "
                      "(needs [gateway]); see conf/gateway.toml and conf/client.toml")


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
    upstream = net.ifname("upstream_interface")
    mtu = _mtu(net)
    net.finish()
    session = _session(r)
    r.finish()
    return GatewayConfig(path=path, node=node, listen=listen, tun=tun, address=address,
                         upstream_interface=upstream, mtu=mtu, session=session)


def _client(path: Path, data: dict) -> ClientConfig:
    r = _Reader(path, data)
    node = _node(r)
    gw = r.table("gateway")
    endpoint = gw.endpoint("endpoint")
    key_text = gw.get("public_key", str, "the gateway's public key (base64, from `tunnelgate pubkey`)")
    try:
        public_key = decode_key(key_text)
    except ValueError as e:
        raise gw.error("public_key", f"a base64 X25519 public key (32 bytes): {e}", key_text) from None
    gw.finish()
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
    net.finish()
    session = _session(r)
    r.finish()
    return ClientConfig(path=path, node=node, endpoint=endpoint, gateway_public_key=public_key,
                        tun=tun, routes=tuple(routes), mtu=mtu, session=session)
