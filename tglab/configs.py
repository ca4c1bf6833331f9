"""A gateway and a client configured for a lab: keys and TOML in one directory.

The demo, the benchmarks and the tests all start the real daemons from files
written here, so a config change is made once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunnelgate import keys
from .topology import GW_LINK

PORT = 51900
TUNNEL6 = "fd64:7467::1/64"     # the IPv6 side of 100.64.0.1/24: the same host number


@dataclass(frozen=True)
class Pair:
    dir: Path
    gateway: Path          # gateway.toml
    client: Path           # client.toml
    gateway_public: str
    client_public: str


def write_pair(directory: Path, gateway_extra: str = "", client_extra: str = "",
               routes: tuple[str, ...] = ("0.0.0.0/0",), tun: str = "tgs0", client_tun: str = "tg0",
               tunnel_address: str = "100.64.0.1/24", port: int = PORT,
               tunnel_address6: str | None = None, listen: str | None = None, user: str = "root") -> Pair:
    """Keys (gw.key, cl.key) and configs with state in gw/ and cl/ under directory.
    *_extra: more TOML sections appended as they are ([pricing], [policy], [payment], ...).
    tunnel_address6: a dual-stack tunnel (e.g. TUNNEL6). listen: the gateway's listen
    address (default GW_LINK, the client's endpoint either way). user: [daemon] user, the
    account the daemons drop to after set-up; the lab keeps root unless told (an
    unprivileged user must be able to reach directory, see test_privilege.py)."""
    directory.mkdir(parents=True, exist_ok=True)
    gw_key, cl_key = keys.generate(), keys.generate()
    keys.write_private(directory / "gw.key", gw_key)
    keys.write_private(directory / "cl.key", cl_key)
    gw_public = keys.b64(keys.public_of(gw_key))
    gateway = directory / "gateway.toml"
    gateway.write_text(f"""[node]
private_key_file = "gw.key"
state_dir = "gw"
[daemon]
user = "{user}"
[link]
listen = "{listen or GW_LINK}:{port}"
[network]
tun = "{tun}"
address = "{tunnel_address}"
{f'address6 = "{tunnel_address6}"' if tunnel_address6 else ""}
upstream_interface = "veth-up"
{gateway_extra}
""")
    client = directory / "client.toml"
    client.write_text(f"""[node]
private_key_file = "cl.key"
state_dir = "cl"
[daemon]
user = "{user}"
[gateway]
endpoint = "{GW_LINK}:{port}"
public_key = "{gw_public}"
[network]
tun = "{client_tun}"
routes = {json.dumps(list(routes))}
{client_extra}
""")
    return Pair(directory, gateway, client, gw_public, keys.b64(keys.public_of(cl_key)))
