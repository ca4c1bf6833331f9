"""A chain of relays in the lab (topology.chain): a gateway, N relays, a client, real daemons
started by the CLI with the dummy payment backend. Used by tests/integration/test_relay.py
and the bench's two-hop row."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tunnelgate import keys
from .topology import ALT, SPARE, UPSTREAM, UPSTREAM6, chain_hop

PORT = 51900
TG = [sys.executable, "-m", "tunnelgate.cli"]


class RelayEnv:
    """relays: how many (1: client - relay1 - gw - up). gw_price: the gateway's default_price;
    margin: every relay's; relay_max: the most a relay pays upstream ([upstream.policy]
    max_price); *_extra: more TOML for the gateway, each relay, the client. spare_price: the
    client also lists the lab's spare gateway gw2 (topology.chain(spare=True)) at this price,
    both as [[gateways]], so its market chooses between the relay and gw2. alt_price: relay1
    also lists the lab's gwalt (topology.chain(alt=True)) at this price, both upstreams as
    [[upstream.gateways]], so the relay's own market chooses between gw and gwalt. ipv6:
    dual-stack tunnels at every hop (the client routes UPSTREAM6 too)."""

    def __init__(self, lab, relays: int = 1, gw_price: str = "0.5", margin: str = "0.25",
                 relay_max: str = "10", gw_extra: str = "", relay_extra: str = "", client_extra: str = "",
                 client_routes: tuple[str, ...] = (f"{UPSTREAM}/32",), spare_price: str | None = None,
                 alt_price: str | None = None, ipv6: bool = False):
        self.lab, self.relays, self.spare = lab, relays, spare_price is not None
        self.alt = alt_price is not None
        self.dir = Path(tempfile.mkdtemp(prefix="tgr-", dir="/tmp"))
        self.public: dict[str, str] = {}
        for name in ["gw", "gw2", "gwalt", "client"] + [f"relay{i}" for i in range(1, relays + 1)]:
            key = keys.generate()
            keys.write_private(self.dir / f"{name}.key", key)
            self.public[name] = keys.b64(keys.public_of(key))
        gw = chain_hop(0, relays)
        self.conf = {"gw": self._gateway("gw", gw["link"], gw["tunnel"], gw_price, gw_extra, self._six(0, ipv6))}
        for i in range(1, relays + 1):
            hop = chain_hop(i, relays)
            seller = "gw" if i == 1 else f"relay{i - 1}"
            if i == 1 and self.alt:
                upstream = (self._listed("upstream.gateways", "gw", hop["upstream"])
                            + self._listed("upstream.gateways", "gwalt", ALT["link"]))
            else:
                upstream = f'[upstream.gateway]\n{self._seller(seller, hop["upstream"])}'
            self.conf[f"relay{i}"] = self._write(f"relay{i}", f"""[link]
listen = "{hop['link']}:{PORT}"
[network]
tun = "tgs0"
address = "{hop['tunnel']}"
{self._six(i, ipv6)}[pricing]
margin = "{margin}"
{relay_extra}
{upstream}[upstream.network]
tun = "tgu0"
routes = ["0.0.0.0/0"{', "::/0"' if ipv6 else ""}]
[upstream.policy]
max_price = "{relay_max}"
""")
        if self.alt:
            self.conf["gwalt"] = self._gateway("gwalt", ALT["link"], ALT["tunnel"], alt_price, gw_extra)
        if ipv6:
            client_routes = (*client_routes, f"{UPSTREAM6}/128")
        routes = ", ".join(f'"{r}"' for r in client_routes)
        last, relay_link = f"relay{relays}", chain_hop(relays, relays)["link"]
        if self.spare:
            self.conf["gw2"] = self._gateway("gw2", SPARE["link"], SPARE["tunnel"], spare_price, gw_extra)
            sellers = self._listed("gateways", last, relay_link) + self._listed("gateways", "gw2", SPARE["link"])
        else:
            sellers = f"[gateway]\n{self._seller(last, relay_link)}"
        self.conf["client"] = self._write("client", f"""{sellers}[network]
tun = "tg0"
routes = [{routes}]
{client_extra}""")

    def _seller(self, name: str, address: str) -> str:
        """A seller's endpoint and key, as a [gateway] (or [[gateways]]) table holds them."""
        return f'endpoint = "{address}:{PORT}"\npublic_key = "{self.public[name]}"\n'

    def _listed(self, table: str, name: str, address: str) -> str:
        """One entry of a [[gateways]] (or [[upstream.gateways]]) list, labelled by name."""
        return f'[[{table}]]\n{self._seller(name, address)}label = "{name}"\n'

    def _gateway(self, name: str, listen: str, tunnel: str, price: str, extra: str, six: str = "") -> Path:
        """A gateway with its own uplink (veth-up): gw, and the lab's gwalt and gw2."""
        return self._write(name, f"""[link]
listen = "{listen}:{PORT}"
[network]
tun = "tgs0"
address = "{tunnel}"
{six}upstream_interface = "veth-up"
[pricing]
default_price = "{price}"
{extra}""")

    @staticmethod
    def _six(i: int, ipv6: bool) -> str:
        """Hop I's IPv6 tunnel prefix (the host numbers of its IPv4 one), when dual-stack."""
        return f'address6 = "fd64:7467:{i}::1/64"\n' if ipv6 else ""

    def _write(self, name: str, body: str) -> Path:
        path = self.dir / f"{name}.toml"
        path.write_text(f'[node]\nprivate_key_file = "{name}.key"\nstate_dir = "{name}"\n'
                        f'[daemon]\nuser = "root"\n{body}\n')
        return path

    @property
    def names(self) -> list[str]:
        """Upstream first: the order they start in (gwalt after the relay, whose upstream
        tunnel thus takes gw's address: a move to gwalt then needs source translation)."""
        return (["gw"] + [f"relay{i}" for i in range(1, self.relays + 1)] + (["gwalt"] if self.alt else [])
                + (["gw2"] if self.spare else []) + ["client"])

    def tg(self, ns: str, *args, check=True, timeout=60) -> subprocess.CompletedProcess:
        return self.lab.run(ns, *TG, *args, check=check, timeout=timeout)

    def start(self) -> None:
        for name in self.names:
            self.tg(name, "up" if name == "client" else "serve", "-c", str(self.conf[name]))

    def request(self, name: str, cmd: str, **kw):
        from tunnelgate.daemon.control import request
        return request(self.dir / name / "control.sock", cmd, **kw)

    def status(self, name: str) -> dict:
        return self.request(name, "status")

    def history(self, name: str) -> list | dict:
        import json
        return json.loads(self.tg(name, "history", "-c", str(self.conf[name]), "--json").stdout)

    def pid(self, name: str) -> int:
        return int((self.dir / name / "tunnelgate.pid").read_text())

    def kill9(self, name: str) -> None:
        os.kill(self.pid(name), signal.SIGKILL)

    def logs(self, lines: int = 40) -> str:
        out = []
        for name in self.names:
            p = self.dir / name / "tunnelgate.log"
            if p.exists():
                out.append(f"--- {name} log ---\n" + "\n".join(p.read_text().splitlines()[-lines:]))
        return "\n".join(out)

    def close(self) -> None:
        for name in reversed(self.names):
            self.tg(name, "down", "-c", str(self.conf[name]), check=False)
        for name in self.names:
            try:
                os.kill(self.pid(name), signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def relay_path(contract_kb: int):
    """The bench's two-hop row (tglab/bench.py): a context manager as bench.tg_up, over a lab
    of topology.chain(1) (its ``topology``): client — relay — gateway — up, every daemon with
    contracts of contract_kb; yields the tunnel processes (client, relay, gw) for CPU figures."""
    import contextlib
    from .topology import chain

    @contextlib.contextmanager
    def up(lab, work, fam=None):
        extra = f"contract_kb = {contract_kb}\nmax_contract_kb = {max(contract_kb, 100_000)}\n"
        env = RelayEnv(lab, 1, gw_extra=extra, relay_extra=extra, relay_max="10",
                       ipv6=fam is not None and fam.v == 6)
        try:
            env.start()
            yield {n: env.pid(n) for n in ("client", "relay1", "gw")}
        except Exception as e:
            raise RuntimeError(f"{e}\n{env.logs(15)}") from None
        finally:
            env.close()
    up.topology = chain(1)
    return up
