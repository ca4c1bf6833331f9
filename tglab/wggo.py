"""A wireguard-go tunnel between a lab's client and gateway namespaces.

Used by the benchmark (`scripts/bench`) as the reference to compare
tunnelgate with. No `wg` tool needed: keys are X25519 keys made with
`cryptography`, and each wireguard-go is configured through its UAPI socket
(`/var/run/wireguard/<if>.sock`, `set=1` …). Addresses and routes with `ip`.

Layout (tunnel prefix 100.96.0.0/24, inside the lab's 100.64.0.0/10 range):

    client ns: wgB<tag>c 100.96.0.2/24, route 198.18.2.0/24 dev wgB<tag>c
    gw ns:     wgB<tag>g 100.96.0.1/24, UDP 198.18.1.1:51820, ip_forward=1,
               nft table `inet tgbench_<tag>`: masquerade what leaves via veth-up
               from the tunnel prefix

so the client reaches the upstream host 198.18.2.2 through the tunnel, as it
does through tunnelgate. With ipv6=True the tunnel also has fd96:7467::1,2/64
and routes may name the upstream's IPv6 prefix (the bench's --ipv6). Both wireguard-go processes run in the foreground
(`-f`), children of this process, so their CPU time can be read from /proc.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

DEBIAN_BINARY = "/usr/bin/wireguard-go"
UAPI_DIR = Path("/var/run/wireguard")
GW_LINK = "198.18.1.1"
UPSTREAM_NET = "198.18.2.0/24"
UPLINK = "veth-up"
PORT = 51820
PREFIX6 = "fd96:7467::"     # the tunnel's IPv6 prefix (/64) when it carries IPv6


class WgError(Exception):
    pass


def keypair() -> tuple[bytes, bytes]:
    """(private, public) raw 32-byte X25519 keys."""
    k = X25519PrivateKey.generate()
    priv = k.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pub = k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return priv, pub


def uapi(ifname: str, request: str, timeout: float = 5) -> dict[str, list[str]]:
    """Send one UAPI request (`set=1\\n…` or `get=1\\n`) and return the reply's keys."""
    path = UAPI_DIR / f"{ifname}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(request.rstrip("\n").encode() + b"\n\n")
        buf = b""
        deadline = time.monotonic() + timeout
        while not buf.endswith(b"\n\n") and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    out: dict[str, list[str]] = {}
    for line in buf.decode().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    if out.get("errno", ["0"])[-1] != "0":
        raise WgError(f"UAPI {request.split(chr(10))[0]} on {ifname}: errno={out['errno'][-1]}")
    return out


def _stat(pid: int | str) -> list[str]:
    """/proc/<pid>/stat fields after the command name (index 0 = state, field 3)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    """CPU seconds (utime+stime, all threads) of a process, plus its reaped
    children (cutime+cstime) and its live descendants: a daemon that spreads
    work over child processes is counted whole."""
    tick = os.sysconf("SC_CLK_TCK")
    f = _stat(pid)
    total = sum(int(x) for x in f[11:15])
    children: dict[int, list[tuple[int, int]]] = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            g = _stat(d.name)
        except (OSError, ValueError):
            continue
        children.setdefault(int(g[1]), []).append((int(d.name), int(g[11]) + int(g[12])))
    todo = [pid]
    while todo:
        for child, ticks in children.get(todo.pop(), ()):
            total += ticks
            todo.append(child)
    return total / tick


def _exe_pid(pid: int, name: str, timeout: float = 3) -> int:
    """The PID actually running `name`: `pid` itself if the namespace wrapper exec'd,
    else its first descendant with that command name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith(name[:15]):
                return pid
        except FileNotFoundError:
            raise WgError(f"{name} (pid {pid}) exited at once")
        for child in Path("/proc").glob("[0-9]*"):
            try:
                st = (child / "stat").read_text()
                ppid = int(st[st.rindex(")") + 2:].split()[1])
                if ppid == pid and (child / "comm").read_text().strip().startswith(name[:15]):
                    return int(child.name)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
        time.sleep(0.05)
    return pid


def setup_forwarding(lab, table: str, sources: list[str], uplink: str = UPLINK) -> None:
    """In the gateway namespace: forwarding on and an nft table of our own that
    masquerades traffic from `sources` (IPv4 or IPv6 prefixes) leaving through `uplink`."""
    lab.run(lab.gw, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    if any(":" in s for s in sources):
        lab.run(lab.gw, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
    lab.run(lab.gw, "nft", "add", "table", "inet", table)
    lab.run(lab.gw, "nft", "add", "chain", "inet", table, "post",
            "{ type nat hook postrouting priority 100 ; }")
    for src in sources:
        lab.run(lab.gw, "nft", "add", "rule", "inet", table, "post",
                "oifname", uplink, "ip6" if ":" in src else "ip", "saddr", src, "masquerade")


def remove_forwarding(lab, table: str) -> None:
    lab.run(lab.gw, "nft", "delete", "table", "inet", table, check=False)


class WgTunnel:
    """Two wireguard-go processes (client and gw namespaces) joined over the lab link."""

    def __init__(self, lab, binary: str | Path = DEBIAN_BINARY, tag: str | None = None,
                 prefix: str = "100.96.0", routes: tuple[str, ...] = (UPSTREAM_NET,),
                 forward: bool = True, log_dir: Path | None = None, ipv6: bool = False):
        self.lab = lab
        self.binary = str(binary)
        self.tag = tag or os.urandom(2).hex()
        self.ifname = {"client": f"wgB{self.tag}c", "gw": f"wgB{self.tag}g"}
        self.addr = {"client": f"{prefix}.2", "gw": f"{prefix}.1"}
        self.prefix = f"{prefix}.0/24"
        # ipv6: the tunnel carries IPv6 as well (routes may then hold IPv6 prefixes)
        self.addr6 = {"client": PREFIX6 + "2", "gw": PREFIX6 + "1"} if ipv6 else {}
        self.routes = routes
        self.forward = forward
        self.table = f"tgbench_{self.tag}"
        self.log_dir = Path(log_dir) if log_dir else None
        self.procs: dict[str, subprocess.Popen] = {}
        self.pids: dict[str, int] = {}
        self._logs: list = []

    def ns(self, side: str) -> str:
        return self.lab.client if side == "client" else self.lab.gw

    def _spawn(self, side: str) -> None:
        ifname = self.ifname[side]
        sock = UAPI_DIR / f"{ifname}.sock"
        if sock.exists():  # a leftover of an earlier run with the same random tag
            sock.unlink()
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"wireguard-go-{side}.log", "wb")
            self._logs.append(out)
        else:
            out = subprocess.DEVNULL
        p = self.lab.popen(self.ns(side), "env", "WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error",
                           self.binary, "-f", ifname, stdout=out, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL)
        self.procs[side] = p
        deadline = time.monotonic() + 10
        while not sock.exists():
            if p.poll() is not None:
                raise WgError(f"{self.binary} {ifname} exited with {p.returncode} before its UAPI socket appeared")
            if time.monotonic() > deadline:
                raise WgError(f"{self.binary} {ifname}: no UAPI socket {sock} after 10 s")
            time.sleep(0.05)
        self.pids[side] = _exe_pid(p.pid, "wireguard-go")

    def start(self, timeout: float = 10) -> "WgTunnel":
        keys = {side: keypair() for side in ("client", "gw")}
        try:
            for side in ("gw", "client"):
                self._spawn(side)
            uapi(self.ifname["gw"], "\n".join([
                "set=1", f"private_key={keys['gw'][0].hex()}", f"listen_port={PORT}", "replace_peers=true",
                f"public_key={keys['client'][1].hex()}", "replace_allowed_ips=true",
                f"allowed_ip={self.addr['client']}/32",
                *([f"allowed_ip={self.addr6['client']}/128"] if self.addr6 else [])]))
            uapi(self.ifname["client"], "\n".join([
                "set=1", f"private_key={keys['client'][0].hex()}", "replace_peers=true",
                f"public_key={keys['gw'][1].hex()}", f"endpoint={GW_LINK}:{PORT}",
                "replace_allowed_ips=true", f"allowed_ip={self.prefix}",
                *([f"allowed_ip={PREFIX6}/64"] if self.addr6 else []),
                *[f"allowed_ip={r}" for r in self.routes]]))
            for side in ("gw", "client"):
                ns, ifn = self.ns(side), self.ifname[side]
                self.lab.run(ns, "ip", "address", "add", f"{self.addr[side]}/24", "dev", ifn)
                if self.addr6:
                    self.lab.run(ns, "ip", "address", "add", f"{self.addr6[side]}/64", "dev", ifn, "nodad")
                self.lab.run(ns, "ip", "link", "set", ifn, "up")
            for r in self.routes:
                self.lab.run(self.lab.client, "ip", "route", "replace", r, "dev", self.ifname["client"])
            if self.forward:
                setup_forwarding(self.lab, self.table, [self.prefix] + ([f"{PREFIX6}/64"] if self.addr6 else []))
            self._wait_handshake(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_handshake(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.lab.run(self.lab.client, "ping", "-n", "-c", "1", "-W", "1", self.addr["gw"],
                             check=False, timeout=5)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise WgError(f"no ping through the wireguard-go tunnel to {self.addr['gw']} within {timeout:.0f} s")

    def tx_bytes(self, side: str = "client") -> int:
        """Bytes sent into the tunnel by one end (its interface's tx counter)."""
        r = self.lab.run(self.ns(side), "cat", f"/sys/class/net/{self.ifname[side]}/statistics/tx_bytes")
        return int(r.stdout.strip())

    def cpu(self) -> dict[str, float]:
        return {side: cpu_seconds(pid) for side, pid in self.pids.items()}

    def stop(self) -> None:
        if self.forward:
            try:
                remove_forwarding(self.lab, self.table)
            except Exception:
                pass
        for side, p in self.procs.items():
            pid = self.pids.get(side, p.pid)
            for target in {pid, p.pid}:
                try:
                    os.kill(target, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                for target in {pid, p.pid}:
                    try:
                        os.kill(target, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                p.wait(timeout=5)
            sock = UAPI_DIR / f"{self.ifname[side]}.sock"
            if sock.exists():
                sock.unlink()
        self.procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()

    def __enter__(self) -> "WgTunnel":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
