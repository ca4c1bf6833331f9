"""A lab of network namespaces for integration tests, demos and benchmarks,
built from a Topology (topology.py; by default THREE_NAMESPACES: client ──
gw ── up, and the optional stranger on the client's link).

The veth pairs are created directly inside the namespaces, so nothing ever
appears in the root namespace. ``destroy()`` kills what the lab started (by
PID), every process left in its namespaces, and deletes them.

    with Lab("tgtab12") as lab:
        lab.build()
        sums = lab.start_upstream({"1M.bin": 1_000_000})
        lab.run(lab.client, "ping", "-c1", GW_LINK)

CLI: ``scripts/lab up|down|exec PREFIX ...`` (see main()).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .topology import (market, CLIENT_LINK, CLIENT_LINK6, GW_LINK, GW_LINK6, GW_UP, GW_UP6, STRANGER_LINK,
                       THREE_NAMESPACES, UPSTREAM, UPSTREAM6, Link, Node, Topology)

__all__ = ["Lab", "LabError", "CLIENT_LINK", "STRANGER_LINK", "GW_LINK", "GW_UP", "UPSTREAM", "CLIENT_LINK6", "GW_LINK6",
           "GW_UP6", "UPSTREAM6",
           "HTTP_PORT", "IPERF_PORT", "main"]

HTTP_PORT = 8080
IPERF_PORT = 5201

MARK_DIR = Path("/run/tunnelgate-lab")   # owner markers: who may clean which lab
REPO_ROOT = Path(__file__).resolve().parents[1]
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_]{1,24}$")


class LabError(Exception):
    pass


class LabCommandError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        err = self.stderr if isinstance(self.stderr, str) else (self.stderr or b"").decode(errors="replace")
        out = self.output if isinstance(self.output, str) else (self.output or b"").decode(errors="replace")
        return (f"command {self.cmd} exited {self.returncode}"
                + (f"\nstderr: {err.strip()[-2000:]}" if err and err.strip() else "")
                + (f"\nstdout: {out.strip()[-2000:]}" if out and out.strip() else ""))


def _ip(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise LabCommandError(p.returncode, ["ip", *args], p.stdout, p.stderr)
    return p


def _netns_list() -> list[str]:
    try:
        out = _ip("netns", "list", check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _netns_pids(ns: str) -> list[int]:
    try:
        out = _ip("netns", "pids", ns, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(x) for x in out.split() if x.isdigit()]


def _proc_starttime(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]   # field 22: starttime


def exit_on_sigterm() -> None:
    """Make SIGTERM (timeout(1), a CI job ending, kill) unwind like Ctrl-C, so
    that the finally blocks of a script's labs delete their namespaces and end
    their processes; the default action would leave them behind."""
    def terminated(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, terminated)


def _kill_pids(pids: list[int], grace: float = 2.0) -> None:
    """SIGTERM these PIDs, wait up to ``grace`` s, SIGKILL the rest."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
        except ProcessLookupError:
            pass
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _proc_starttime(p) is not None and not _is_zombie(p)]
        if alive:
            time.sleep(0.05)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class Lab:
    # the roles cleanup_stale() and `scripts/lab list` know a lab by
    ROLES = tuple(dict.fromkeys(THREE_NAMESPACES.roles() + market(9).roles()))

    def __init__(self, prefix: str, topology: Topology = THREE_NAMESPACES):
        if not _PREFIX_RE.match(prefix):
            raise LabError(f"bad lab prefix {prefix!r}: 1-24 characters of [A-Za-z0-9_]")
        self.prefix = prefix
        self.topology = topology
        self.names = {role: f"{prefix}-{role}" for role in topology.roles()}   # extras' before add()
        self.namespaces = [self.names[n.role] for n in topology.nodes]       # those that exist (or will)
        self.procs: list[subprocess.Popen] = []
        self.tmpdirs: list[str] = []
        self.files_dir: str | None = None
        self.built = False

    def __getattr__(self, role: str) -> str:
        """lab.client, lab.gw, ...: the namespace of each role of the topology."""
        names = self.__dict__.get("names") or {}
        if role in names:
            return names[role]
        raise AttributeError(f"{type(self).__name__} has no attribute or role {role!r}")

    # -- helpers -------------------------------------------------------------
    def ns(self, name: str) -> str:
        """A role ('client', 'gw', ...) or a full namespace name of this lab -> the namespace name."""
        if name in self.names:
            return self.names[name]
        if name in self.namespaces:
            return name
        raise LabError(f"{name!r} is not a namespace of lab {self.prefix} "
                       f"(use {', '.join(self.names)} or {', '.join(self.namespaces)})")

    def _marker(self) -> Path:
        return MARK_DIR / f"{self.prefix}.json"

    def _write_marker(self, manual: bool = False) -> None:
        MARK_DIR.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        self._marker().write_text(json.dumps(
            {"pid": None if manual else pid, "starttime": None if manual else _proc_starttime(pid),
             "manual": manual, "namespaces": self.namespaces}))

    # -- build / destroy -----------------------------------------------------
    def build(self, manual: bool = False) -> "Lab":
        """Create the topology's namespaces and links. ``manual`` marks a CLI lab that
        cleanup_stale() must leave alone (its creator exits)."""
        existing = set(_netns_list())
        clash = [n for n in self.namespaces if n in existing]
        if clash:
            raise LabError(f"namespaces {clash} already exist: `scripts/lab down {self.prefix}` "
                           f"or Lab.cleanup_stale({self.prefix!r})")
        self._write_marker(manual)   # before the namespaces, so a concurrent cleanup sees an owner
        self.built = True
        try:
            self._make(self.topology.nodes, self.topology.links)
            self._wait_settled()
        except BaseException:
            self.destroy()
            raise
        return self

    def add(self, role: str) -> str:
        """Build the topology's optional node ``role`` and its links, once.
        Returns its namespace; destroy() deletes it."""
        extra = self.topology.extra(role)
        ns = self.names[role]
        if ns in self.namespaces:
            return ns
        self.namespaces.append(ns)
        self._write_marker()
        self._make((extra.node,), extra.links)
        return ns

    def add_stranger(self) -> str:
        """A fourth namespace on the client-gateway link (a macvlan on the client's
        veth, so the gateway sees it on the same interface): STRANGER_LINK, default
        route via the gateway, no tunnel. Returns its name; destroy() deletes it."""
        return self.add("stranger")

    def _make(self, nodes: tuple[Node, ...], links: tuple[Link, ...]) -> None:
        for node in nodes:
            ns = self.names[node.role]
            _ip("netns", "add", ns)
            # no IPv6 DAD: link-local addresses (and their routes) appear at once,
            # so tests comparing route/address snapshots see a settled namespace.
            # No forwarding: a gateway daemon turns it on itself.
            self.run(ns, "sh", "-c", "for c in all default; do "
                     "echo 0 > /proc/sys/net/ipv6/conf/$c/accept_dad; done; "
                     "echo 0 > /proc/sys/net/ipv4/ip_forward; "
                     "echo 0 > /proc/sys/net/ipv6/conf/all/forwarding")
        for link in links:
            a = link.ports[0]
            if link.kind == "veth":
                b = link.ports[1]
                _ip("link", "add", a.dev, "netns", self.names[a.node], "type", "veth",
                    "peer", "name", b.dev, "netns", self.names[b.node])
                new = link.ports
            elif link.kind == "bridge":
                hub = self.names[link.hub]
                _ip("-n", hub, "link", "add", "br0", "type", "bridge")
                _ip("-n", hub, "link", "set", "br0", "up")
                for p in link.ports:
                    side = f"b-{p.node}"[:15]
                    _ip("link", "add", p.dev, "netns", self.names[p.node], "type", "veth",
                        "peer", "name", side, "netns", hub)
                    _ip("-n", hub, "link", "set", side, "master", "br0")
                    _ip("-n", hub, "link", "set", side, "up")
                new = link.ports
            else:   # macvlan on a's interface, made where a is, then moved and renamed
                new = link.ports[1:]
                for p in new:
                    tmp = f"mv-{p.node}"[:15]
                    _ip("-n", self.names[a.node], "link", "add", "link", a.dev, "name", tmp,
                        "type", "macvlan", "mode", "bridge")
                    _ip("-n", self.names[a.node], "link", "set", tmp, "netns", self.names[p.node])
                    _ip("-n", self.names[p.node], "link", "set", tmp, "name", p.dev)
            for p in new:
                ns = self.names[p.node]
                if p.addr:
                    _ip("-n", ns, "addr", "add", f"{p.addr}/{link.prefixlen}", "dev", p.dev)
                if p.addr6:
                    _ip("-n", ns, "addr", "add", f"{p.addr6}/{link.prefixlen6}", "dev", p.dev)
                _ip("-n", ns, "link", "set", p.dev, "up")
        for node in nodes:
            ns = self.names[node.role]
            _ip("-n", ns, "link", "set", "lo", "up")
            for r in node.routes:
                _ip("-n", ns, *(("-6",) if ":" in r.via else ()), "route", "add", r.dst, "via", r.via)

    def _wait_settled(self, timeout: float = 10) -> None:
        """Wait until every veth is up with carrier and has its IPv6 link-local address."""
        deadline = time.monotonic() + timeout
        while True:
            pending = []
            for ns in self.namespaces:
                links = self.run(ns, "ip", "-br", "link", "show", "type", "veth").stdout.splitlines()
                devs = {line.split()[0].split("@")[0] for line in links if line.strip()}
                addrs = "".join(l + "\n" for l in self.run(ns, "ip", "-6", "-br", "addr").stdout.splitlines()
                                if l.split() and l.split()[0].split("@")[0] in devs)
                for line in links:
                    f = line.split()
                    if len(f) < 2 or f[1] != "UP":
                        pending.append(f"{ns}:{line.strip()}")
                if "tentative" in addrs or addrs.count("fe80::") < len(links):
                    pending.append(f"{ns}: IPv6 link-local pending")
            if not pending:
                return
            if time.monotonic() > deadline:
                raise LabError(f"lab links not up after {timeout}s: {pending}")
            time.sleep(0.05)

    def destroy(self) -> None:
        """Kill what the lab started, every process left in its namespaces,
        delete the namespaces and temp dirs. Idempotent; never raises."""
        try:
            self._stop_procs()
        except Exception:
            pass
        for ns in self.namespaces:
            try:
                if ns in _netns_list():
                    _kill_pids(_netns_pids(ns), grace=1.0)
                    _ip("netns", "del", ns, check=False)
            except Exception:
                pass
        for d in self.tmpdirs:
            shutil.rmtree(d, ignore_errors=True)
        self.tmpdirs.clear()
        try:
            self._marker().unlink()
        except OSError:
            pass
        self.built = False

    def _stop_procs(self) -> None:
        live = [p for p in self.procs if p.poll() is None]
        for p in live:
            try:
                os.killpg(p.pid, signal.SIGTERM)   # own session: pgid == pid
            except OSError:
                try:
                    p.terminate()
                except OSError:
                    pass
        deadline = time.monotonic() + 3
        for p in live:
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    p.kill()
                try:
                    p.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
        self.procs.clear()

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    # -- running things ------------------------------------------------------
    def run(self, ns: str, *cmd, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        """Run ``cmd`` in namespace ``ns`` (output captured as text unless told otherwise).
        check=True raises LabCommandError (a CalledProcessError showing stderr)."""
        full = ["ip", "netns", "exec", self.ns(ns), *map(str, cmd)]
        if "stdout" not in kw and "stderr" not in kw and "capture_output" not in kw:
            kw["capture_output"] = True
        kw.setdefault("text", True)
        p = subprocess.run(full, timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise LabCommandError(p.returncode, full, p.stdout, p.stderr)
        return p

    def popen(self, ns: str, *cmd, **kw) -> subprocess.Popen:
        """Start ``cmd`` in namespace ``ns`` in its own session; killed by destroy()."""
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(ns), *map(str, cmd)], **kw)
        self.procs.append(p)
        return p

    def python(self, ns: str, code: str, *args, timeout: float = 30, check: bool = True,
               **kw) -> subprocess.CompletedProcess:
        """Run ``python -c code args...`` (this interpreter, tunnelgate importable) in ``ns``."""
        env = dict(kw.pop("env", None) or os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return self.run(ns, sys.executable, "-c", code, *args, timeout=timeout, check=check, env=env, **kw)

    def tmpdir(self, tag: str = "") -> str:
        d = tempfile.mkdtemp(prefix=f"tglab-{self.prefix}-{tag}")
        self.tmpdirs.append(d)
        return d

    def start_upstream(self, files: dict[str, int] | None = None, wait: float = 15) -> dict[str, str]:
        """In the up namespace: httpd on UPSTREAM:8080 serving ``files`` (random
        content of the given sizes) and ``iperf3 -s`` on 5201; waits until both
        listen. Returns name -> sha256 hex."""
        d = self.tmpdir("files-")
        self.files_dir = d
        sums: dict[str, str] = {}
        for name, size in (files or {}).items():
            if "/" in name or name in ("", ".", ".."):
                raise LabError(f"bad file name {name!r}")
            h = hashlib.sha256()
            with open(os.path.join(d, name), "wb") as f:
                left = int(size)
                while left > 0:
                    chunk = os.urandom(min(left, 1 << 20))
                    h.update(chunk)
                    f.write(chunk)
                    left -= len(chunk)
            sums[name] = h.hexdigest()
        logs = self.tmpdir("logs-")
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        httpd_log = open(os.path.join(logs, "httpd.log"), "wb")
        iperf_log = open(os.path.join(logs, "iperf3.log"), "wb")
        try:
            httpd = self.popen(self.up, sys.executable, "-m", "tglab.httpd", "--bind", UPSTREAM,
                               "--port", HTTP_PORT, "--dir", d, stdin=subprocess.DEVNULL,
                               stdout=httpd_log, stderr=subprocess.STDOUT, env=env)
            httpd6 = self.popen(self.up, sys.executable, "-m", "tglab.httpd", "--bind", UPSTREAM6,
                                "--port", HTTP_PORT, "--dir", d, stdin=subprocess.DEVNULL,
                                stdout=httpd_log, stderr=subprocess.STDOUT, env=env)
            iperf = self.popen(self.up, "iperf3", "-s", "-B", UPSTREAM, "-p", IPERF_PORT,
                               stdin=subprocess.DEVNULL, stdout=iperf_log, stderr=subprocess.STDOUT)
            iperf6 = self.popen(self.up, "iperf3", "-s", "-B", UPSTREAM6, "-p", IPERF_PORT,
                                stdin=subprocess.DEVNULL, stdout=iperf_log, stderr=subprocess.STDOUT)
        finally:
            httpd_log.close()
            iperf_log.close()
        want = {f"{UPSTREAM}:{HTTP_PORT}", f"[{UPSTREAM6}]:{HTTP_PORT}", f"{UPSTREAM}:{IPERF_PORT}",
                f"[{UPSTREAM6}]:{IPERF_PORT}"}
        deadline = time.monotonic() + wait
        while True:
            for name, p in (("httpd", httpd), ("httpd", httpd6), ("iperf3", iperf), ("iperf3", iperf6)):
                if p.poll() is not None:
                    log = Path(logs, f"{name}.log").read_text(errors="replace")[-2000:]
                    raise LabError(f"{name} in {self.up} exited with {p.returncode}: {log}")
            out = self.run(self.up, "ss", "-Hltn", check=False).stdout
            listening = {line.split()[3] for line in out.splitlines() if len(line.split()) >= 4}
            if want <= listening:
                return sums
            if time.monotonic() > deadline:
                raise LabError(f"upstream servers not listening after {wait}s (have {sorted(listening)})")
            time.sleep(0.05)

    # -- stale labs ----------------------------------------------------------
    @staticmethod
    def cleanup_stale(prefix_start: str) -> list[str]:
        """Delete lab namespaces (PREFIX-client/-gw/-up) whose prefix starts with
        ``prefix_start`` and whose creating process is gone. Labs of live
        processes (e.g. a concurrent pytest run) and CLI labs are left alone.
        Returns the namespaces deleted."""
        if not prefix_start:
            raise LabError("cleanup_stale needs a non-empty prefix")
        removed = []
        by_prefix: dict[str, list[str]] = {}
        for ns in _netns_list():
            if not ns.startswith(prefix_start):
                continue
            prefix, _, role = ns.rpartition("-")
            if role in Lab.ROLES and prefix:
                by_prefix.setdefault(prefix, []).append(ns)
        for prefix, nss in by_prefix.items():
            marker = MARK_DIR / f"{prefix}.json"
            try:
                info = json.loads(marker.read_text())
            except (OSError, ValueError):
                info = None
            if info is not None:
                if info.get("manual"):
                    continue
                pid = info.get("pid")
                if isinstance(pid, int) and _proc_starttime(pid) == info.get("starttime") \
                        and not _is_zombie(pid):
                    continue        # its owner is alive
            for ns in nss:
                _kill_pids(_netns_pids(ns), grace=1.0)
                _ip("netns", "del", ns, check=False)
                removed.append(ns)
            try:
                marker.unlink()
            except OSError:
                pass
        for d in Path(tempfile.gettempdir()).glob(f"tglab-{prefix_start}*"):
            pfx = d.name[len("tglab-"):].split("-")[0]
            if pfx in by_prefix and all(ns in removed for ns in by_prefix[pfx]):
                shutil.rmtree(d, ignore_errors=True)
        return removed


# -- CLI (scripts/lab) -----------------------------------------------------------------

USAGE = """usage: scripts/lab up PREFIX [--serve]   build the lab (--serve: httpd :8080 + iperf3 -s on upstream)
       scripts/lab down PREFIX           kill its processes, delete its namespaces
       scripts/lab exec PREFIX client|gw|up CMD...
       scripts/lab list                  show lab namespaces"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if os.geteuid() != 0:
        print("scripts/lab: needs root (network namespaces)", file=sys.stderr)
        return 1
    try:
        if cmd == "list":
            for ns in _netns_list():
                if ns.rpartition("-")[2] in Lab.ROLES:
                    print(ns)
            return 0
        if not rest:
            print(USAGE, file=sys.stderr)
            return 2
        lab = Lab(rest[0])
        if cmd == "up":
            lab.build(manual=True)
            if "--serve" in rest[1:]:
                sums = lab.start_upstream({"1M.bin": 1_000_000, "50M.bin": 50_000_000})
                lab.procs.clear()      # leave the servers running; `down` kills them
                lab.tmpdirs.clear()
                print(f"upstream: http://{UPSTREAM}:{HTTP_PORT}/ files in {lab.files_dir}: {sums}; "
                      f"iperf3 -s on {UPSTREAM}:{IPERF_PORT}")
            print(f"lab {lab.prefix}: {lab.client} ({CLIENT_LINK}), {lab.gw} ({GW_LINK}, {GW_UP}), "
                  f"{lab.up} ({UPSTREAM})")
            return 0
        if cmd == "down":
            lab.destroy()
            for d in Path(tempfile.gettempdir()).glob(f"tglab-{lab.prefix}-*"):
                shutil.rmtree(d, ignore_errors=True)
            return 0
        if cmd == "exec":
            if len(rest) < 3:
                print(USAGE, file=sys.stderr)
                return 2
            ns = lab.ns(rest[1])
            os.execvp("ip", ["ip", "netns", "exec", ns, *rest[2:]])
        print(USAGE, file=sys.stderr)
        return 2
    except (LabError, subprocess.CalledProcessError) as exc:
        print(f"scripts/lab: {exc}", file=sys.stderr)
        return 1
