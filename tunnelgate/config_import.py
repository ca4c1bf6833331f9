"""Convert the original (seed) project's ``KEY=VALUE`` config into tunnelgate TOML.

    toml_text, notes = convert(open("net.conf").read(), "gateway", "net.conf")

The seed format: one ``KEY=VALUE`` per line, ``#`` comments (whole lines, or after
whitespace in an unquoted value), optional single or double quotes, blank lines,
an optional ``export`` in front. Keys: LINK_INTERFACE, NETWORK_INTERFACE,
PAYMENT_INTERFACE, NGP_INTERFACE, ACCOUNT_ID, DEFAULT_PRICE, GRACE_PERIOD_PRICE,
GRACE_PERIOD_TIME, CONTRACT_DATA, CONTRACT_TIME, PAYMENT_AMOUNT, DATA_RENEWAL,
TIME_RENEWAL, IGNORE_INTERFACE.

What they meant in the original (Antiklos/network-gatekeeper, its main.c/main.h/README):
LINK_INTERFACE, NETWORK_INTERFACE and PAYMENT_INTERFACE are numbers that pick a module
(link 1 = UDP, network 1 = IPv4 gating, payment 1 = simulated, 2 = Electrum; 0 = the test
modules); IGNORE_INTERFACE is the gateway's uplink (the one interface not gated);
NGP_INTERFACE is, on a client, the server's address; ACCOUNT_ID the bitcoin address that
receives payment; PAYMENT_AMOUNT the satoshis sent each time the prepaid balance runs out;
GRACE_PERIOD_PRICE what the grace period's data is worth (in DEFAULT_PRICE units, so data =
GRACE_PERIOD_PRICE / DEFAULT_PRICE kilobytes) and GRACE_PERIOD_TIME its seconds.

Units assumed: DEFAULT_PRICE in msat per KB; CONTRACT_DATA in kilobytes of 1024 bytes
(the original multiplies it by 1024), DATA_RENEWAL in bytes (a suffix such as ``10MB``,
``500KB``, ``1MiB`` is honoured on both); CONTRACT_TIME, TIME_RENEWAL and GRACE_PERIOD_TIME
in seconds (a suffix ``s``/``m``/``h``/``d`` is honoured); PAYMENT_AMOUNT in satoshis.
Bytes become whole KB (1 KB = 1000 bytes), rounded up.

Every key produces a note saying what it became or why it has no equivalent;
missing keys get tunnelgate's default and a note; unknown keys a note. Values
that only the user can know (the gateway's address and public key for a
client, an upstream interface, wallet credentials) are written as ``REPLACE-…``
placeholders that ``config.load`` rejects, naming the key, until they are filled;
everything else is written valid. ``docs/config.md`` has the full mapping.

Over 600 lines: one mapping per key of the original's several net.conf generations, each
with the note it prints; they read best side by side.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from tunnelgate import config, money
from tunnelgate.protocol.buyer import ClientPolicy
from tunnelgate.protocol.seller import Pricing

SEED_KEYS = ("LINK_INTERFACE", "NETWORK_INTERFACE", "PAYMENT_INTERFACE", "NGP_INTERFACE", "ACCOUNT_ID",
             "DEFAULT_PRICE", "GRACE_PERIOD_PRICE", "GRACE_PERIOD_TIME", "CONTRACT_DATA", "CONTRACT_TIME",
             "PAYMENT_AMOUNT", "DATA_RENEWAL", "TIME_RENEWAL", "IGNORE_INTERFACE")
ROLES = ("gateway", "client")

# PAYMENT_INTERFACE values (lower case) -> backend
PAYMENT_NAMES = {
    "dummy": "dummy", "none": "dummy", "test": "dummy", "fake": "dummy", "free": "dummy",
    "cashu": "cashu", "ecash": "cashu", "e-cash": "cashu", "nutshell": "cashu",
    "bitcoind": "bitcoind", "bitcoin": "bitcoind", "btc": "bitcoind", "onchain": "bitcoind",
    "on-chain": "bitcoind", "bitcoin-core": "bitcoind", "bitcoincore": "bitcoind", "core": "bitcoind",
    "knots": "bitcoind", "bitcoin-knots": "bitcoind",
    "electrum": "electrum", "lightning": "electrum", "ln": "electrum",
}
# the original's module numbers (main.h *_IDENTIFIER; README: "Change the PAYMENT_INTERFACE ...
# to 2" for Electrum)
LINK_MODULES = {"0": "the test link module", "1": "the UDP link module"}
NETWORK_MODULES = {"0": "the test network module", "1": "IPv4 gating"}
PAYMENT_MODULES = {"0": ("dummy", "the test payment module"), "1": ("dummy", "simulated payments"),
                   "2": ("electrum", "Electrum")}
LINK_PORT = 51900

PH_ENDPOINT = "REPLACE-with-GATEWAY-IP:51900"
PH_PUBLIC_KEY = "REPLACE-with-`tunnelgate pubkey gateway.key`="
PH_UPSTREAM = "<REPLACE-uplink>"        # not a valid interface name on purpose ('<', '>')
PH_RPC_URL = "REPLACE-with-http://USER:PASS@127.0.0.1:8332/wallet/NAME"
PH_MINT_URL = "REPLACE-with-http://MINT-HOST:3338"
ELECTRUM_DIR = "~/.electrum"           # Electrum's own default data directory

_BYTE_UNITS = {"": 1, "b": 1, "byte": 1, "bytes": 1,
               "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_TIME_UNITS = {"": 1, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
               "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
               "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400}
_NUM_UNIT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BTC_ADDRESS = re.compile(r"^(?:(?:bc|tb|bcrt)1[02-9ac-hj-np-z]{8,87}|[123mn][1-9A-HJ-NP-Za-km-z]{25,34})$",
                          re.IGNORECASE)


class ConfigImportError(ValueError):
    """A seed value that cannot be converted; the message names the file, line and key."""


@dataclass
class Entry:
    value: str
    line: int


def parse_seed(text: str, source_name: str = "net.conf") -> tuple[dict[str, Entry], list[str]]:
    """``KEY=VALUE`` lines -> {KEY: Entry}, notes about lines that were skipped or repeated."""
    values: dict[str, Entry] = {}
    notes: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, rest = line.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            notes.append(f"{source_name}:{n}: not a KEY=VALUE line, ignored: {raw.strip()!r}")
            continue
        value, problem = _unquote(rest.strip())
        if problem:
            notes.append(f"{source_name}:{n}: {key}: {problem}")
        upper = key.upper()
        if upper in values:
            notes.append(f"{source_name}:{n}: {upper} set again (first on line {values[upper].line}); "
                         "the last value is used, as the original did")
        values[upper] = Entry(value, n)
    return values, notes


def _unquote(rest: str) -> tuple[str, str]:
    if rest[:1] in ("'", '"'):
        q = rest[0]
        end = rest.find(q, 1)
        if end < 0:
            return rest[1:], f"no closing {q}; took the rest of the line"
        after = rest[end + 1:].strip()
        if after and not after.startswith("#"):
            return rest[1:end], f"ignored {after!r} after the closing quote"
        return rest[1:end], ""
    m = re.search(r"\s#", rest)
    if m:
        rest = rest[:m.start()]
    return rest.strip(), ""


def guess_role(values: dict[str, Entry]) -> str | None:
    """gateway if only gateway-side keys (CONTRACT_*) are set, client if only client-side ones
    (*_RENEWAL); None when the file has both or neither."""
    gw = any(k in values for k in ("CONTRACT_DATA", "CONTRACT_TIME"))
    cl = any(k in values for k in ("DATA_RENEWAL", "TIME_RENEWAL"))
    if gw != cl:
        return "gateway" if gw else "client"
    return None


# --- value conversions -------------------------------------------------------------------------

def _number_unit(value: str, units: dict[str, int], what: str, where: str) -> Decimal:
    m = _NUM_UNIT.match(value)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in units:
        raise ConfigImportError(f"{where}: expected {what}, got {value!r}")
    return Decimal(m.group(1)) * units[unit]


def bytes_to_kb(value: str, where: str, bare: str = "b") -> tuple[int, bool]:
    """'10000000' / '10MB' -> (KB rounded up, whether it was rounded). ``bare``: the unit of a
    number without one ("kib" for the original's CONTRACT_DATA)."""
    units = {**_BYTE_UNITS, "": _BYTE_UNITS[bare]}
    what = "a size in kilobytes (e.g. 10, 10MB)" if bare == "kib" else "a size in bytes (e.g. 10000000, 10MB, 500KB)"
    nbytes = _number_unit(value, units, what, where)
    kb = (nbytes / money.BYTES_PER_KB).to_integral_value(rounding=ROUND_CEILING)
    return int(kb), kb * money.BYTES_PER_KB != nbytes


def seconds(value: str, where: str) -> tuple[int, bool]:
    s = _number_unit(value, _TIME_UNITS, "a duration in seconds (e.g. 3600, 60m, 1h)", where)
    whole = s.to_integral_value(rounding=ROUND_CEILING)
    return int(whole), whole != s


def price_text(value: str, where: str) -> str:
    """DEFAULT_PRICE -> the decimal string tunnelgate writes (validated by money.parse_price)."""
    try:
        units = money.parse_price(value.strip())
    except money.MoneyError as e:
        raise ConfigImportError(f"{where}: expected a price in msat per KB ({e})") from None
    return _decimal_text(Decimal(units) / money.PRICE_SCALE)


def _decimal_text(d: Decimal) -> str:
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def toml_str(value: str) -> str:
    """A TOML basic string (escapes quotes, backslashes and control characters)."""
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _printable(text: str) -> str:
    """Safe inside a TOML comment: no control characters."""
    return "".join(ch if ch == "\t" or (ord(ch) >= 0x20 and ord(ch) != 0x7F) else "?" for ch in text)


def _is_url(value: str) -> bool:
    u = urllib.parse.urlsplit(value)
    return u.scheme in ("http", "https") and bool(u.hostname)


# --- the conversion ------------------------------------------------------------------------------

class _Out:
    """TOML lines with aligned comments, and the notes."""

    def __init__(self, source: str):
        self.lines: list[str] = []
        self.notes: list[str] = []
        self.todo: list[str] = []
        self.source = source

    def section(self, name: str, comment: str = "") -> None:
        if self.lines:
            self.lines.append("")
        self.lines.append(f"[{name}]" + (f"  # {comment}" if comment else ""))

    def kv(self, key: str, value: str, comment: str = "") -> None:
        text = f"{key} = {value}"
        if comment:
            text = f"{text:<36}  # {_printable(comment)}"
        self.lines.append(text)

    def comment(self, text: str) -> None:
        self.lines.append(f"# {_printable(text)}")

    def note(self, text: str, entry: Entry | None = None) -> None:
        where = f"{self.source}:{entry.line}" if entry else self.source
        self.notes.append(f"{where}: {text}")

    def placeholder(self, key: str, why: str) -> None:
        self.todo.append(f"{key}: {why}")


def _where(source: str, key: str, e: Entry) -> str:
    return f"{source}:{e.line}: {key}"


def convert(text: str, role: str | None, source_name: str = "net.conf") -> tuple[str, list[str]]:
    """Seed config text -> (TOML text for ``role``, notes). ``role`` None: guessed from the keys
    (gateway when unclear, with a note). Raises ConfigImportError for values that cannot be
    converted (a price that is not a number, …)."""
    values, parse_notes = parse_seed(text, source_name)
    o = _Out(source_name)
    o.notes.extend(parse_notes)
    if role is None:
        role = guess_role(values)
        if role is None:
            role = "gateway"
            o.note("no --role given and the keys do not tell (CONTRACT_* are the gateway's, *_RENEWAL "
                   "the client's): converted as a gateway; pass --role client for a client")
        else:
            o.note(f"no --role given: converted as a {role} (from the keys it sets)")
    if role not in ROLES:
        raise ConfigImportError(f"role must be 'gateway' or 'client', not {role!r}")
    get = values.get
    used = set()

    def take(key: str) -> Entry | None:
        used.add(key)
        return get(key)

    o.comment(f"tunnelgate {role} config, converted from {source_name} by `tunnelgate config import`.")
    o.comment("Units: prices in msat per KB (1 KB = 1000 bytes) as decimal strings; amounts in whole msat.")
    o.comment("Every key is described in docs/config.md.")
    todo_at = len(o.lines)

    # [node]
    keyfile = f"{role}.key"
    o.section("node")
    o.kv("private_key_file", toml_str(keyfile), f"create it: tunnelgate keygen --out {keyfile}")
    o.kv("state_dir", toml_str(f"/var/lib/tunnelgate/{role}"), "database, control socket, log")
    o.note(f"[node] private_key_file = \"{keyfile}\" (new: the tunnel is encrypted; relative to the TOML "
           f"file): create it with `tunnelgate keygen --out {keyfile}`"
           + ("" if role == "client" else " and give the printed public key to clients"))

    link, network = take("LINK_INTERFACE"), take("NETWORK_INTERFACE")
    ign, ngp = take("IGNORE_INTERFACE"), take("NGP_INTERFACE")
    _modules(o, link, network)
    if role == "gateway":
        _gateway_net(o, link, network, ign, ngp)
    else:
        _client_net(o, link, network, ign, ngp)

    price = take("DEFAULT_PRICE")
    cdata, ctime = take("CONTRACT_DATA"), take("CONTRACT_TIME")
    rdata, rtime = take("DATA_RENEWAL"), take("TIME_RENEWAL")
    gprice, gtime = take("GRACE_PERIOD_PRICE"), take("GRACE_PERIOD_TIME")
    if role == "gateway":
        _pricing(o, price, cdata, ctime, gprice, gtime)
        for key, e, what in (("DATA_RENEWAL", rdata, "data_renewal_kb"), ("TIME_RENEWAL", rtime, "time_renewal_s")):
            if e is not None:
                o.note(f"{key}={e.value} → no equivalent on a gateway: the client decides when to renew "
                       f"([policy] {what} in a client config; convert with --role client)", e)
    else:
        _policy(o, price, rdata, rtime)
        for key, e, what in (("CONTRACT_DATA", cdata, "contract_kb"), ("CONTRACT_TIME", ctime, "contract_time_s"),
                             ("GRACE_PERIOD_PRICE", gprice, "grace_kb"), ("GRACE_PERIOD_TIME", gtime, "grace_time_s")):
            if e is not None:
                o.note(f"{key}={e.value} → no equivalent on a client: the gateway sets the contract's terms "
                       f"([pricing] {what} in a gateway config; convert with --role gateway)", e)

    _payment(o, role, take("PAYMENT_INTERFACE"), take("ACCOUNT_ID"), take("PAYMENT_AMOUNT"))

    for key, e in values.items():
        if key not in used:
            o.note(f"{key}={e.value} → unknown key, not converted (tunnelgate knows {', '.join(SEED_KEYS)}); "
                   "check docs/config.md for a matching setting", e)

    if o.todo:
        head = ["#", "# Fill in before use (config.load refuses these placeholders, naming the key):"]
        head += [f"#   {t}" for t in o.todo]
        o.lines[todo_at:todo_at] = head
        o.notes.append(f"{source_name}: to do before `tunnelgate {'serve' if role == 'gateway' else 'up'}`: "
                       + "; ".join(o.todo))
    return "\n".join(o.lines) + "\n", o.notes


def _module(e: Entry | None, table: dict, key: str) -> str | None:
    """The original's module name for a numeric LINK/NETWORK_INTERFACE, None if not a number."""
    if e is None or not e.value.strip().isdigit():
        return None
    return table.get(e.value.strip().lstrip("0") or "0", f"module {e.value.strip()} (unknown to tunnelgate)")


def _modules(o: _Out, link: Entry | None, network: Entry | None) -> None:
    name = _module(link, LINK_MODULES, "LINK_INTERFACE")
    if name is not None:
        o.note(f"LINK_INTERFACE={link.value} → picked {name} in the original; tunnelgate's peers always talk "
               f"over its encrypted UDP tunnel ([link] listen on the gateway, [gateway] endpoint on a client)",
               link)
    name = _module(network, NETWORK_MODULES, "NETWORK_INTERFACE")
    if name is not None:
        o.note(f"NETWORK_INTERFACE={network.value} → picked {name} in the original; tunnelgate gates IPv4 "
               "(and IPv6) through its own TUN and contracts per destination: nothing to set", network)


def _ip(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def _gateway_net(o: _Out, link: Entry | None, network: Entry | None, ign: Entry | None,
                 ngp: Entry | None) -> None:
    o.section("link")
    listen = f"0.0.0.0:{LINK_PORT}"
    if ngp is not None and _ip(ngp.value) and ":" not in _ip(ngp.value):
        listen = f"{_ip(ngp.value)}:{LINK_PORT}"
        o.note(f"NGP_INTERFACE={ngp.value} → [link] listen = \"{listen}\" (the address peers reach this node "
               "at)", ngp)
    elif ngp is not None:
        o.note(f"NGP_INTERFACE={ngp.value} → an interface, not an address: [link] listen = \"{listen}\"; put "
               f"{ngp.value}'s address there (`ip -4 addr show {ngp.value}`)", ngp)
    if link is not None and _module(link, LINK_MODULES, "") is None:
        o.kv("listen", toml_str(listen), f"narrow to {link.value}'s address: \"ADDRESS:{LINK_PORT}\"")
        o.note(f"LINK_INTERFACE={link.value} → not a module number (the original's picks a link module, 1 = "
               f"UDP); read as an interface: [link] listen = \"{listen}\": put {link.value}'s address there "
               f"(`ip -4 addr show {link.value}`)", link)
    else:
        o.kv("listen", toml_str(listen), "where peers reach us (UDP): narrow to one address")
        if link is None:
            o.note(f"LINK_INTERFACE not set → [link] listen = \"{listen}\"")
    o.section("network")
    o.kv("tun", toml_str("tgs0"), "created by tunnelgate")
    o.kv("address", toml_str("100.64.0.1/24"), "tunnel address; clients get addresses from this prefix")
    o.note("[network] tun = \"tgs0\", address = \"100.64.0.1/24\": new in tunnelgate (its own TUN and "
           "tunnel prefix, tunnelgate's defaults); change them if 100.64.0.0/24 is taken")
    # the uplink: IGNORE_INTERFACE in the original (the one interface it did not gate); an
    # interface name in NETWORK_INTERFACE (not the original's meaning) only when that is unset
    up = ign
    if up is None and network is not None and _module(network, NETWORK_MODULES, "") is None:
        up = network
    if up is not None and config.IFNAME.match(up.value):
        o.kv("upstream_interface", toml_str(up.value), f"{'IGNORE' if up is ign else 'NETWORK'}_INTERFACE: "
                                                          "forwarded traffic leaves here")
        if up is ign:
            o.note(f"IGNORE_INTERFACE={ign.value} → [network] upstream_interface = \"{ign.value}\" (the "
                   "gateway's uplink: forwarded traffic leaves there, masqueraded)", ign)
        else:
            o.note(f"NETWORK_INTERFACE={network.value} → not a module number (the original's picks a network "
                   f"module, 1 = IPv4); read as the uplink since IGNORE_INTERFACE is not set: [network] "
                   f"upstream_interface = \"{network.value}\"", network)
    else:
        o.kv("upstream_interface", toml_str(PH_UPSTREAM), "REPLACE: the uplink interface")
        if up is None:
            o.note("IGNORE_INTERFACE not set → [network] upstream_interface is a placeholder: name the "
                   "interface with the upstream link")
        else:
            o.note(f"{'IGNORE' if up is ign else 'NETWORK'}_INTERFACE={up.value} → not an interface name "
                   "(1-15 of A-Z a-z 0-9 _ . -); [network] upstream_interface is a placeholder", up)
        o.placeholder("[network] upstream_interface", "the interface with the upstream link, e.g. \"eth0\"")
    if network is not None and up is not network and _module(network, NETWORK_MODULES, "") is None:
        o.note(f"NETWORK_INTERFACE={network.value} → not a module number (the original's picks a network "
               "module, 1 = IPv4); the uplink is IGNORE_INTERFACE, so this is not used", network)
    o.kv("mtu", "1420")


def _client_net(o: _Out, link: Entry | None, network: Entry | None, ign: Entry | None,
                ngp: Entry | None) -> None:
    o.section("gateway")
    server = _ip(ngp.value) if ngp is not None else None
    if server:
        endpoint = f"[{server}]:{LINK_PORT}" if ":" in server else f"{server}:{LINK_PORT}"
        o.kv("endpoint", toml_str(endpoint), "NGP_INTERFACE: the server's address; the gateway's UDP port")
        o.note(f"NGP_INTERFACE={ngp.value} → [gateway] endpoint = \"{endpoint}\" (the server's address; "
               f"{LINK_PORT} is tunnelgate's default port: use the gateway's [link] listen port)", ngp)
    else:
        o.kv("endpoint", toml_str(PH_ENDPOINT), "REPLACE: the gateway's [link] listen address")
        o.placeholder("[gateway] endpoint", "the gateway's \"IP:PORT\" (its [link] listen)")
        if ngp is not None:
            o.note(f"NGP_INTERFACE={ngp.value} → not an address (the original's NGP_INTERFACE is the "
                   "server's IP on a client): [gateway] endpoint is a placeholder", ngp)
    o.kv("public_key", toml_str(PH_PUBLIC_KEY), "REPLACE: `tunnelgate pubkey` on the gateway")
    o.placeholder("[gateway] public_key", "the gateway's public key (`tunnelgate pubkey gateway.key` there)")
    o.note("[gateway] public_key is new in tunnelgate (the tunnel is encrypted and pinned to the "
           "gateway's key): a placeholder to fill in")
    if link is not None and _module(link, LINK_MODULES, "") is None:
        o.note(f"LINK_INTERFACE={link.value} → no key: the tunnel's UDP leaves by the route to [gateway] "
               f"endpoint; use the gateway's address on {link.value}'s link as the endpoint", link)
    elif link is None:
        o.note("LINK_INTERFACE not set → nothing to do: the tunnel's UDP follows the route to the endpoint")
    if ign is not None:
        o.note(f"IGNORE_INTERFACE={ign.value} → no equivalent on a client (it named the server's uplink; "
               "convert the server's file with --role gateway)", ign)
    o.section("network")
    o.kv("tun", toml_str("tg0"), "created by tunnelgate")
    o.kv("routes", '["0.0.0.0/0"]', "what goes through the tunnel")
    o.kv("mtu", "1420")
    if network is not None and _module(network, NETWORK_MODULES, "") is None:
        o.note(f"NETWORK_INTERFACE={network.value} → no equivalent: tunnelgate creates its own TUN "
               "([network] tun = \"tg0\") and [network] routes chooses what goes through it "
               "(\"0.0.0.0/0\": everything, the tunnel's own UDP excepted)", network)
    elif network is None:
        o.note("NETWORK_INTERFACE not set → nothing to do: [network] routes = [\"0.0.0.0/0\"] sends "
               "everything through the tunnel")


def _pricing(o: _Out, price: Entry | None, cdata: Entry | None, ctime: Entry | None,
             gprice: Entry | None = None, gtime: Entry | None = None) -> None:
    o.section("pricing")
    if price is not None:
        p = price_text(price.value, _where(o.source, "DEFAULT_PRICE", price))
        o.kv("default_price", toml_str(p), "msat per KB (DEFAULT_PRICE)")
        o.kv("floor_price", toml_str(p), "lowest counter-offer accepted; lower it to negotiate")
        o.note(f"DEFAULT_PRICE={price.value} → [pricing] default_price = \"{p}\" (msat per KB); "
               f"floor_price = \"{p}\" too (the original did not negotiate: lower it to accept counter-offers)",
               price)
    else:
        d = config.DEFAULT_PRICE
        o.kv("default_price", toml_str(d), "msat per KB")
        o.kv("floor_price", toml_str(d), "lowest counter-offer accepted")
        o.note(f"DEFAULT_PRICE not set → [pricing] default_price = \"{d}\" (msat per KB, tunnelgate's default)")
    d = Pricing(default_price=0, floor_price=0)
    if cdata is not None:
        kb, rounded = bytes_to_kb(cdata.value, _where(o.source, "CONTRACT_DATA", cdata), bare="kib")
        if kb < 1:
            raise ConfigImportError(f"{_where(o.source, 'CONTRACT_DATA', cdata)}: expected a size above 0, "
                                    f"got {cdata.value!r}")
        o.kv("contract_kb", str(kb), f"KB per contract (CONTRACT_DATA={cdata.value})")
        o.note(f"CONTRACT_DATA={cdata.value} → [pricing] contract_kb = {kb} (kilobytes of 1024 bytes, as the "
               "original counts them → KB of 1000 bytes" + (", rounded up)" if rounded else ")"), cdata)
    else:
        o.kv("contract_kb", str(d.contract_kb), "KB per contract")
        o.note(f"CONTRACT_DATA not set → [pricing] contract_kb = {d.contract_kb} (tunnelgate's default)")
    if ctime is not None:
        s, rounded = seconds(ctime.value, _where(o.source, "CONTRACT_TIME", ctime))
        if s < 1:
            raise ConfigImportError(f"{_where(o.source, 'CONTRACT_TIME', ctime)}: expected a duration above 0, "
                                    f"got {ctime.value!r}")
        o.kv("contract_time_s", str(s), f"seconds (CONTRACT_TIME={ctime.value})")
        o.note(f"CONTRACT_TIME={ctime.value} → [pricing] contract_time_s = {s} (seconds"
               + (", rounded up)" if rounded else ")"), ctime)
    else:
        o.kv("contract_time_s", str(d.contract_time_s), "seconds")
        o.note(f"CONTRACT_TIME not set → [pricing] contract_time_s = {d.contract_time_s} (tunnelgate's default)")
    grace_s, grace_kb = d.grace_time_s, d.grace_kb
    if gtime is not None:
        grace_s, _ = seconds(gtime.value, _where(o.source, "GRACE_PERIOD_TIME", gtime))
        o.note(f"GRACE_PERIOD_TIME={gtime.value} → [pricing] grace_time_s = {grace_s}", gtime)
    if gprice is not None:
        where = _where(o.source, "GRACE_PERIOD_PRICE", gprice)
        worth = _number_unit(gprice.value, {"": 1}, "a number (what the grace period's data is worth)", where)
        per_kib = (Decimal(money.parse_price(price.value.strip())) / money.PRICE_SCALE
                   if price is not None else Decimal(0))
        if per_kib > 0:
            # the original: grace data = GRACE_PERIOD_PRICE / DEFAULT_PRICE kilobytes of 1024 bytes
            grace_kb = int((worth / per_kib * 1024 / 1000).to_integral_value(rounding=ROUND_CEILING))
            o.note(f"GRACE_PERIOD_PRICE={gprice.value} → [pricing] grace_kb = {grace_kb} (the original "
                   f"let GRACE_PERIOD_PRICE / DEFAULT_PRICE = {_decimal_text(worth / per_kib)} kilobytes "
                   "through before payment)", gprice)
        else:
            o.note(f"GRACE_PERIOD_PRICE={gprice.value} → no DEFAULT_PRICE to divide it by: [pricing] "
                   f"grace_kb = {grace_kb} (tunnelgate's default)", gprice)
    o.kv("grace_time_s", str(grace_s), "data flows this long after ACCEPT while payment is verified")
    o.kv("grace_kb", str(grace_kb), "…and at most this many KB")
    if gtime is None and gprice is None:
        o.note(f"[pricing] grace_time_s = {d.grace_time_s}, grace_kb = {d.grace_kb}, scope = \"host\": "
               "tunnelgate's defaults (see docs/config.md)")


def _policy(o: _Out, price: Entry | None, rdata: Entry | None, rtime: Entry | None) -> None:
    o.section("policy")
    d = ClientPolicy(max_price=0)
    if price is not None:
        p = price_text(price.value, _where(o.source, "DEFAULT_PRICE", price))
        o.kv("max_price", toml_str(p), "msat per KB: the highest price accepted (DEFAULT_PRICE)")
        o.note(f"DEFAULT_PRICE={price.value} → [policy] max_price = \"{p}\" (msat per KB): the highest price "
               f"this client accepts; a higher ask gets a counter-offer of counter_fraction × the ask", price)
    else:
        p = config.DEFAULT_MAX_PRICE
        o.kv("max_price", toml_str(p), "msat per KB: the highest price accepted")
        o.note(f"DEFAULT_PRICE not set → [policy] max_price = \"{p}\" (msat per KB, tunnelgate's default)")
    o.kv("counter_fraction", toml_str(d.counter_fraction), "counter-offer this fraction of a too-high price")
    if rdata is not None:
        kb, rounded = bytes_to_kb(rdata.value, _where(o.source, "DATA_RENEWAL", rdata))
        o.kv("data_renewal_kb", str(kb), f"renew when less is left (DATA_RENEWAL={rdata.value})")
        o.note(f"DATA_RENEWAL={rdata.value} → [policy] data_renewal_kb = {kb} (bytes → KB of 1000 bytes"
               + (", rounded up: renews slightly earlier)" if rounded else ")"), rdata)
    else:
        o.kv("data_renewal_kb", str(d.data_renewal_kb), "renew when less than this is left (KB)")
        o.note(f"DATA_RENEWAL not set → [policy] data_renewal_kb = {d.data_renewal_kb} (tunnelgate's default)")
    if rtime is not None:
        s, rounded = seconds(rtime.value, _where(o.source, "TIME_RENEWAL", rtime))
        o.kv("time_renewal_s", str(s), f"renew when fewer seconds are left (TIME_RENEWAL={rtime.value})")
        o.note(f"TIME_RENEWAL={rtime.value} → [policy] time_renewal_s = {s} (seconds"
               + (", rounded up)" if rounded else ")"), rtime)
    else:
        o.kv("time_renewal_s", str(d.time_renewal_s), "renew when fewer seconds than this are left")
        o.note(f"TIME_RENEWAL not set → [policy] time_renewal_s = {d.time_renewal_s} (tunnelgate's default)")
    o.comment("max_spend_per_hour = 100000         # msat; no limits were set in the original")
    o.comment("max_spend_per_day = 1000000")
    o.comment("max_spend_total = 10000000")
    o.note("[policy] max_spend_per_hour/_per_day/_total: new in tunnelgate, written commented out "
           "(no limit); set them to cap spending")


def _payment(o: _Out, role: str, iface: Entry | None, account: Entry | None,
             amount: Entry | None = None) -> None:
    o.section("payment")
    if iface is None:
        backend = "dummy"
        o.note("WARNING: PAYMENT_INTERFACE not set → [payment] backend = \"dummy\", which moves NO money "
               "(demos and tests); choose \"electrum\", \"cashu\" or \"bitcoind\" for real use")
    elif iface.value.strip().isdigit():
        backend, what = PAYMENT_MODULES.get(iface.value.strip().lstrip("0") or "0",
                                            ("dummy", f"module {iface.value.strip()}, unknown to tunnelgate"))
        o.note(f"{'WARNING: ' if backend == 'dummy' else ''}PAYMENT_INTERFACE={iface.value} → the original's "
               f"{what} → [payment] backend = \"{backend}\""
               + (" (moves NO money: demos and tests only; 2 = Electrum for real payments)"
                  if backend == "dummy" else ""), iface)
    else:
        backend = PAYMENT_NAMES.get(iface.value.strip().lower())
        if backend is None:
            backend = "dummy"
            extra = (" (Lightning is the electrum backend: PAYMENT_INTERFACE=electrum or 2)"
                     if re.search(r"lightning|^ln|lnd|cln|c-lightning", iface.value.lower()) else "")
            o.note(f"WARNING: PAYMENT_INTERFACE={iface.value} → no such backend{extra}; [payment] backend = "
                   "\"dummy\", which moves NO money: choose \"cashu\" or \"bitcoind\" before real use", iface)
        else:
            o.note(f"PAYMENT_INTERFACE={iface.value} → [payment] backend = \"{backend}\""
                   + (" (moves NO money: demos and tests only)" if backend == "dummy" else ""), iface)
    o.kv("backend", toml_str(backend), "dummy moves NO money" if backend == "dummy" else "")
    acct = account.value.strip() if account is not None else ""
    payer = role == "client"
    if amount is not None:
        _payment_amount(o, role, backend, amount)
    if backend == "electrum":
        _electrum(o, role, account, acct)
        return

    if backend == "dummy":
        if account is not None:
            o.comment(f"ACCOUNT_ID was {acct!r}: the dummy backend has no account")
            o.note(f"ACCOUNT_ID={acct} → no equivalent with the dummy backend (it moves no money); kept as a "
                   "comment", account)
        return

    if backend == "cashu":
        url = acct if acct and _is_url(acct) else ""
        if account is not None and not url:
            o.note(f"ACCOUNT_ID={acct} → not a mint URL (cashu's account is the mint: http(s)://…); "
                   "the mint is a placeholder", account)
        elif account is None:
            o.note("ACCOUNT_ID not set → the cashu mint is a placeholder")
        mint = url or PH_MINT_URL
        if payer:
            o.kv("mint_url", toml_str(mint), "the mint this wallet's ecash comes from (ACCOUNT_ID)")
            o.kv("wallet_dir", toml_str("ecash"), "this client's ecash (relative to this file)")
            if url:
                o.note(f"ACCOUNT_ID={acct} → [payment] mint_url = \"{url}\" (the mint the client pays from)", account)
            o.note("[payment] wallet_dir = \"ecash\" (new): the client's ecash wallet; fund it with "
                   "`python -m tunnelgate.payments.cashu fund ecash AMOUNT_SAT --mint URL`")
            if not url:
                o.placeholder("[payment] mint_url", "the mint's URL, e.g. \"http://127.0.0.1:3338\"")
        else:
            o.kv("mints", f"[{toml_str(mint)}]", "accepted mints (ACCOUNT_ID)")
            o.kv("p2pk_key_file", toml_str("cashu-p2pk.key"),
                 "python -m tunnelgate.payments.cashu keygen cashu-p2pk.key")
            o.kv("wallet_dir", toml_str("ecash"), "where received ecash is kept (relative to this file)")
            if url:
                o.note(f"ACCOUNT_ID={acct} → [payment] mints = [\"{url}\"] (the mint whose tokens are "
                       "accepted; tokens are locked to the gateway's P2PK key)", account)
            o.note("[payment] p2pk_key_file = \"cashu-p2pk.key\" (new; create it with `python -m "
                   "tunnelgate.payments.cashu keygen cashu-p2pk.key`), wallet_dir = \"ecash\" (new)")
            if not url:
                o.placeholder("[payment] mints", "the accepted mints' URLs, e.g. [\"http://127.0.0.1:3338\"]")
        return

    # bitcoind: ACCOUNT_ID is the wallet's name (or the whole RPC URL)
    if acct and _is_url(acct):
        o.kv("rpc_url", toml_str(acct), "the wallet's JSON-RPC URL (ACCOUNT_ID)")
        o.note("ACCOUNT_ID → [payment] rpc_url (a URL: used as the wallet's JSON-RPC URL as is; not echoed "
               "here as it may hold a password)", account)
    else:
        addr = acct.removeprefix("bitcoin:")
        if acct and _BTC_ADDRESS.match(addr):
            o.note(f"ACCOUNT_ID={acct} → looks like a bitcoin address, which has no equivalent: "
                   + ("the gateway hands out a fresh address from its wallet for each contract"
                      if not payer else "the client pays from its wallet to the address each contract names")
                   + "; [payment] rpc_url (the wallet) is a placeholder", account)
            url = PH_RPC_URL
        elif acct:
            wallet = urllib.parse.quote(acct, safe="")
            url = f"REPLACE-with-http://USER:PASS@127.0.0.1:8332/wallet/{wallet}"
            o.note(f"ACCOUNT_ID={acct} → the Bitcoin Core wallet's name in [payment] rpc_url "
                   f"(…/wallet/{wallet}); the RPC credentials and port are placeholders", account)
        else:
            url = PH_RPC_URL
            o.note("ACCOUNT_ID not set → [payment] rpc_url is a placeholder")
        o.kv("rpc_url", toml_str(url), "REPLACE: http://USER:PASS@HOST:PORT/wallet/NAME")
        o.placeholder("[payment] rpc_url", "the wallet's JSON-RPC URL: drop \"REPLACE-with-\", fill USER:PASS "
                                           "(bitcoind's rpcauth) and the port")
    if not payer:
        o.kv("min_confirmations", "1", "0 = accept once in the mempool")
        o.note("[payment] min_confirmations = 1 (new, tunnelgate's default): grace covers the wait")


def _payment_amount(o: _Out, role: str, backend: str, amount: Entry) -> None:
    """PAYMENT_AMOUNT: satoshis the original sent whenever the prepaid balance ran out."""
    sat = _number_unit(amount.value, {"": 1}, "a whole number of satoshis", _where(o.source, "PAYMENT_AMOUNT", amount))
    msat = int(sat * 1000)
    if role == "client":
        o.kv("prepay_msat", str(msat), f"pay at least this per payment, the rest is credit (PAYMENT_AMOUNT="
                                       f"{amount.value} sat)")
        o.note(f"PAYMENT_AMOUNT={amount.value} → [payment] prepay_msat = {msat} (the original paid "
               f"{amount.value} sat each time its balance ran out; the surplus is prepaid credit)", amount)
    elif backend == "electrum":
        o.kv("invoice_msat", str(msat), f"each Lightning invoice is a top-up of PAYMENT_AMOUNT={amount.value} sat")
        o.note(f"PAYMENT_AMOUNT={amount.value} → [payment] invoice_msat = {msat} (each Lightning invoice asks "
               "that much; what a contract does not use stays as the client's credit)", amount)
    else:
        o.note(f"PAYMENT_AMOUNT={amount.value} → no equivalent on a gateway with the {backend} backend: "
               "the client chooses how much to prepay ([payment] prepay_msat in its config)", amount)


def _electrum(o: _Out, role: str, account: Entry | None, acct: str) -> None:
    o.kv("electrum_dir", toml_str(ELECTRUM_DIR), "the Electrum daemon's data directory (RPC settings)")
    o.note(f"[payment] electrum_dir = \"{ELECTRUM_DIR}\" (new): tunnelgate talks to the Electrum daemon over "
           "its JSON-RPC, settings read from that directory's config: set them once with `electrum setconfig "
           "rpcport 7777` (and rpcuser, rpcpassword), then restart the daemon; or set [payment] rpc_url")
    if role == "gateway":
        o.kv("method", toml_str("lightning"), "or \"onchain\" (a fresh address per payment)")
        o.note("[payment] method = \"lightning\" (new): one BOLT11 invoice per contract; \"onchain\" takes "
               "payments to a fresh address of the wallet, at min_confirmations (docs/electrum.md)")
    if account is None:
        return
    addr = acct.removeprefix("bitcoin:")
    if _BTC_ADDRESS.match(addr):
        o.comment(f"ACCOUNT_ID was {addr}: the receiving address; "
                  + ("the gateway's Electrum wallet now gives a fresh one per payment" if role == "gateway"
                     else "a client pays what each contract names"))
        o.note(f"ACCOUNT_ID={acct} → the on-chain receiving address: "
               + ("with method = \"onchain\" the gateway's Electrum wallet hands out a fresh address of its "
                  "own per payment (address reuse links every client's payments); make sure that wallet is the "
                  f"one holding {addr}" if role == "gateway" else
                  "a client pays to the address or invoice each contract names, not a fixed one")
               + "; kept as a comment", account)
    else:
        o.comment(f"ACCOUNT_ID was {acct!r}: not a bitcoin address")
        o.note(f"ACCOUNT_ID={acct} → not a bitcoin address (the original's ACCOUNT_ID is the address that "
               "receives payment); kept as a comment", account)
