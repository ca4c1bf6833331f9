"""Scale benchmark: one gateway, many peers, many contracts.

    scripts/bench --peers N [--contracts M] [--time S] [--size BYTES] [--no-pay]
                  [--micro 10,1000,10000,100000] [--no-micro] [--json FILE]

(`scripts/bench` hands over to this module when `--peers` is given.)

A lab `tgS<hex>-{client,gw,up}` is built, a real `tunnelgate serve` runs in the
gw namespace (tunnel prefix 100.64.0.1/16, dummy payments, contracts large and
long enough that none ends during the run), and one worker process in the
client namespace plays N peers: each is a `session.Initiator` on its own UDP
socket with its own control `Channel` (no TUN). Phases, in order:

  handshakes  every peer sends its INIT at once (INITs written before the clock
              starts); handshakes/s = completed / wall time from the first send
              to the last RESP; the gateway's CPU time (/proc/<pid>/stat
              utime+stime, 10 ms ticks) over the same interval.
  peers       gateway RSS (/proc/<pid>/status VmRSS) before and after the handshakes of
              all peers but one (that one handshakes first, alone: what the first
              handshake costs once is no peer's): per peer (`per_peer_kb` in --json).
  contracts   a peer opens a contract by sending one small DATA packet (IPv4/UDP
              from its assigned address) to a destination in 198.19.0.0/16; the
              gateway holds it and PROPOSEs; the peer answers ACCEPT and PAY (the
              dummy backend's proof) on its control channel; the gateway verifies
              and answers PAID. First 1 per peer, later M/N per peer. Counted by
              the peers, and by the gateway (`tunnelgate contracts --json`, by
              state). Memory per contract = RSS delta over the second step / the
              contracts it added, in two halves: the first grows the heap to what
              a burst of new contracts takes at its peak (the peers open up to 64
              each at once), the second measures what a contract holds: RSS delta
              over it / its contracts (`per_contract_kb` in --json; over both
              halves, with the peak: `per_contract_all_kb`). Each RSS 1.5 s after
              the last contract, before the listing.
  idle        gateway CPU with no traffic: with N peers, with N contracts, with M.
  load        all peers send --size byte packets (inner IP length) as fast as one
              process can seal them for --time seconds, round-robin over all
              their contracts: once with N contracts (1 per peer), once with M,
              and once more with M contracts live but traffic only to each
              peer's first destination (load_1's flows: what the number of
              contracts costs apart from spreading traffic over more
              destinations, which costs the kernel a NAT entry per flow).
              Received = an nft counter in the up namespace (prerouting, daddr
              198.19.0.0/16): the gateway forwards and masquerades them out of
              veth-up via the up host, which has forwarding off and drops them
              without answering, so nothing leaves the lab. Mbit/s of inner IP bytes.

Then, without any network, Seller.outbound/.inbound per call with 10 ...
100,000 live contracts (100 per peer, one engine grown through the sizes with the
engine API: first packet, PROPOSE, ACCEPT): over the same 10 flows (the lookup and
metering cost: must stay flat) and over all flows at random (adds the cache/TLB
misses of a working set that grows with the contracts).

A benchmark, not a test: nothing is asserted. The worker shares the CPUs with
the gateway; "sent" vs "received" shows how much the gateway dropped.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import platform
import random
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .daemons import TG_PORT, tg, tg_down, tg_version
from .engines import EngineBuilder, dest
from .topology import CLIENT_LINK, GW_LINK

TUN_ADDRESS = "100.64.0.1/16"
DEST_NET = "198.19.0.0/16"          # routed by the gw via the up host, which drops it
NFT_TABLE = "tgscale"
SERVICE_S = 0.02                     # worker: session/channel timers at least this often
CONTRACT_SIZE = 60                   # inner IP length of the packet that opens a contract
MICRO_SIZES = (10, 1_000, 10_000, 100_000)
MICRO_CALLS = 100_000


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ================================================================ packets

_IPH = struct.Struct("!BBHHHBBH4s4s")
_UDPH = struct.Struct("!HHHH")


def ip_udp(src: bytes, dst: bytes, total_len: int, sport: int = 40000, dport: int = 9) -> bytes:
    """An IPv4/UDP packet of total_len bytes, valid IP header checksum, UDP checksum 0 (none)."""
    hdr = bytearray(_IPH.pack(0x45, 0, total_len, 0, 0x4000, 64, 17, 0, src, dst))
    s = sum(struct.unpack("!10H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into("!H", hdr, 10, ~s & 0xFFFF)
    return bytes(hdr) + _UDPH.pack(sport, dport, total_len - 20, 0) + bytes(total_len - 28)


def split(total: int, parts: int) -> list[int]:
    """total as parts integers that differ by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# ================================================================ /proc

def cpu_s(pid: int) -> float:
    """utime+stime of a process (all threads), seconds."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ================================================================ worker (client namespace)

class FakePeer:
    """One peer: an Initiator on its own UDP socket, a control Channel, no TUN."""

    def __init__(self, idx: int, gw_public: bytes, timing, cipher: str):
        from tunnelgate import keys, session
        from tunnelgate.offload import UdpSender
        from tunnelgate.protocol.channel import Channel
        self.idx = idx
        self.init = session.Initiator(keys.generate(), gw_public, timing, cipher)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((CLIENT_LINK, 0))
        self.sock.setblocking(False)
        self.sender = UdpSender(self.sock)
        self.channel = Channel(int.from_bytes(os.urandom(8), "big"))
        self.addr: bytes | None = None
        self.done_at: float | None = None
        self.dests: list[bytes] = []
        self.latest: dict[bytes, str] = {}       # destination -> its latest proposal's id
        self.proposed_at: dict[bytes, float] = {}
        self.dest_of: dict[str, bytes] = {}      # contract id -> destination
        self.accepted = 0
        self.paid: set[bytes] = set()            # destinations with a paid contract
        self.load_pkts: list[bytes] = []
        self.ring: list[bytes] = []
        self.cursor = 0


class Fleet:
    def __init__(self, cfg: dict):
        from tunnelgate import session
        self.session = session
        self.gw = (cfg["gw_host"], cfg["gw_port"])
        self.gw_pid = cfg.get("gw_pid")        # same pid namespace: its /proc/<pid>/stat is readable
        self.pay = True
        timing = session.Timing()
        cipher = cfg.get("cipher", "auto")
        gw_public = base64.b64decode(cfg["gw_public"])
        t = time.monotonic()
        self.peers = [FakePeer(i, gw_public, timing, cipher) for i in range(cfg["peers"])]
        self.keygen_s = time.monotonic() - t
        self.sel = selectors.DefaultSelector()
        for p in self.peers:
            self.sel.register(p.sock, selectors.EVENT_READ, p)
        self.by_fd = {p.sock.fileno(): p for p in self.peers}
        self.msgs: dict[str, int] = {}
        self.rx = {"data": 0, "keepalive": 0, "control": 0, "bad_messages": 0}
        self.send_errors = 0
        self.last_service = 0.0

    # -- receiving ----------------------------------------------------------------------

    def service(self, wait: float = 0.0) -> None:
        """Read what arrived (waiting up to `wait`), run timers if due."""
        for key, _ in self.sel.select(wait):
            self._drain(key.data)
        now = time.monotonic()
        if now - self.last_service >= SERVICE_S:
            self.last_service = now
            self._timers(now)

    def _drain(self, p: FakePeer) -> None:
        from tunnelgate.protocol import messages as msgs
        s = self.session
        now = time.monotonic()
        for _ in range(256):
            try:
                datagram = p.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            res = p.init.receive(datagram, now)
            if res is None:
                continue
            kind, payload = res
            if kind == s.HANDSHAKE_DONE:
                self._handshake_done(p, payload, now)
            elif kind == s.CONTROL:
                self.rx["control"] += 1
                for raw in p.channel.receive(payload, now):
                    try:
                        self._message(p, msgs.decode(raw))
                    except msgs.ProtocolError:
                        self.rx["bad_messages"] += 1
            elif kind == s.KEEPALIVE:
                self.rx["keepalive"] += 1
            else:
                self.rx["data"] += 1

    def _handshake_done(self, p: FakePeer, payload: bytes, now: float) -> None:
        import ipaddress
        info = json.loads(payload)
        p.addr = ipaddress.IPv4Interface(info["address"]).ip.packed
        if p.done_at is None:
            p.done_at = now

    def _message(self, p: FakePeer, msg) -> None:
        from tunnelgate.money import cost_msat
        from tunnelgate.packet import parse_prefix
        from tunnelgate.payments.dummy import make_proof
        from tunnelgate.protocol import messages as msgs
        self.msgs[msg.TYPE] = self.msgs.get(msg.TYPE, 0) + 1
        if isinstance(msg, msgs.Propose):
            # a new proposal for a destination means the gateway dropped the previous one
            # (e.g. our ACCEPT came after its proposal_timeout_s): accept it as well
            key = parse_prefix(msg.destination)[0]
            if msg.contract_id in p.dest_of:
                return
            p.latest[key] = msg.contract_id
            p.proposed_at[key] = time.monotonic()
            p.dest_of[msg.contract_id] = key
            p.channel.send(msgs.encode(msgs.Accept(msg.contract_id)))
            p.accepted += 1
            if self.pay:
                cost = cost_msat(msg.price, msg.limit_kb)
                method = "dummy" if "dummy" in msg.methods else msg.methods[0]
                p.channel.send(msgs.encode(msgs.Pay(msg.contract_id, cost, method,
                                                    make_proof(msg.contract_id, cost))))
        elif isinstance(msg, msgs.Paid):
            key = p.dest_of.get(msg.contract_id)
            if key is not None:
                p.paid.add(key)

    def _timers(self, now: float) -> None:
        s = self.session
        for p in self.peers:
            if p.addr is None:
                continue                      # not established: the handshake phase retries
            d = p.init.next_deadline()
            if d is not None and d <= now:
                for datagram in p.init.poll(now, time.time_ns(), os.urandom(s.RAND_BYTES)):
                    self._send(p, datagram)
            cd = p.channel.next_deadline()
            if cd is not None and cd <= now:
                for frame in p.channel.poll(now):
                    datagram = p.init.seal(s.CONTROL, frame, now)
                    if datagram is not None:
                        self._send(p, datagram)

    def _send(self, p: FakePeer, datagram: bytes) -> None:
        try:
            p.sock.sendto(datagram, self.gw)
        except OSError:
            self.send_errors += 1

    # -- phases -------------------------------------------------------------------------

    def handshake(self, timeout: float, count: int | None = None) -> dict:
        """The next `count` peers without a session (all of them: None) handshake at once."""
        s = self.session
        now = time.monotonic()
        peers = [p for p in self.peers if p.done_at is None][:count]
        inits = [p.init.begin(now, time.time_ns(), os.urandom(s.RAND_BYTES)) for p in peers]
        cpu0 = cpu_s(self.gw_pid) if self.gw_pid else None
        t0 = time.monotonic()
        for p, datagram in zip(peers, inits):
            self._send(p, datagram)
        retries = 0
        retry_at = t0 + 2.0
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if all(p.done_at is not None for p in peers):
                break
            self.service(0.005)
            now = time.monotonic()
            if now >= retry_at:
                for p in peers:
                    if p.done_at is None:
                        self._send(p, p.init.begin(now, time.time_ns(), os.urandom(s.RAND_BYTES)))
                        retries += 1
                retry_at = now + 2.0
        cpu = (cpu_s(self.gw_pid) - cpu0) if cpu0 is not None else None
        done = [p.done_at for p in peers if p.done_at is not None]
        elapsed = (max(done) - t0) if done else None
        # let the first keepalives confirm the new keys at the gateway
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            self.service(0.01)
        return {"completed": len(done), "peers": len(peers), "elapsed_s": elapsed,
                "retries": retries, "per_s": (len(done) / elapsed) if elapsed else None,
                "gateway_cpu_s": cpu,
                "gateway_cpu_ms_per_handshake": cpu * 1000 / len(done) if cpu is not None and done else None}

    def contracts(self, counts: list[int], pay: bool, timeout: float) -> dict:
        """Grow every live peer to counts[i] destinations (198.19.0.0 upwards): one small
        packet to each new one opens a contract. Done when every destination has a
        proposal we accepted (and, with pay, a PAID)."""
        s = self.session
        self.pay = pay
        live = [p for p in self.peers if p.addr is not None]
        before = sum(len(p.latest) for p in live)
        paid_before = sum(len(p.paid) for p in live)
        for p, n in zip(live, counts):
            p.dests = [dest(j) for j in range(n)]
        t0 = time.monotonic()
        deadline = t0 + timeout

        def settled(p: FakePeer, d: bytes) -> bool:
            return d in p.paid if pay else d in p.latest

        def first_packets(p: FakePeer, todo: list[bytes]) -> int:
            for i in range(0, len(todo), 64):
                pkts = [ip_udp(p.addr, d, CONTRACT_SIZE) for d in todo[i:i + 64]]
                datagrams = p.init.seal_batch(s.DATA, pkts, time.monotonic())
                self.send_errors += p.sender.send(datagrams, self.gw)
            return len(todo)

        sent = 0
        for p in live:                        # one peer at a time, serving replies in between
            sent += first_packets(p, [d for d in p.dests if not settled(p, d)])
            self.service(0)
        resend_at = time.monotonic() + 2.0
        resent = 0

        def complete() -> bool:
            return all(settled(p, d) for p in live for d in p.dests)

        while time.monotonic() < deadline and not complete():
            self.service(0.005)
            now = time.monotonic()
            if now >= resend_at:
                # no proposal yet (first packet lost), or accepted long ago and not paid (the
                # gateway may have withdrawn it): a packet again makes it propose anew
                for p in live:
                    todo = [d for d in p.dests if d not in p.latest
                            or (pay and d not in p.paid and now - p.proposed_at[d] > 12.0)]
                    if todo:
                        resent += first_packets(p, todo)
                resend_at = now + 2.0
        elapsed = time.monotonic() - t0
        end = time.monotonic() + 0.5          # let the last ACKs go out
        while time.monotonic() < end:
            self.service(0.01)
        with_proposal = sum(len(p.latest) for p in live)
        paid = sum(len(p.paid) for p in live)
        return {"requested": sum(counts), "new": sum(counts) - before, "first_packets": sent,
                "resent": resent, "destinations_proposed": with_proposal,
                "proposals": sum(len(p.dest_of) for p in live),
                "accepted": sum(p.accepted for p in live), "paid": paid,
                "new_settled": (paid - paid_before) if pay else (with_proposal - before),
                "elapsed_s": elapsed, "complete": complete(), "messages": dict(self.msgs)}

    def load(self, seconds: float, size: int, batch: int, dests: int = 0) -> dict:
        """`dests` > 0: only each peer's first `dests` destinations (the same
        flows whatever the number of contracts), else all of them."""
        s = self.session
        live = [p for p in self.peers if p.addr is not None and p.dests]
        for p in live:
            targets = p.dests[:dests] if dests > 0 else p.dests
            if len(p.load_pkts) != len(targets) or len(p.load_pkts[0]) != size:
                pkts = [ip_udp(p.addr, d, size) for d in targets]
                # a ring at least one batch longer than the destinations: ring[c:c + batch]
                # for any c < len(pkts) is the next batch, cycling over all destinations
                p.load_pkts = pkts
                p.ring = pkts * (1 + -(-batch // len(pkts)))
            p.cursor = 0
        sent = errors = 0
        cpu0 = time.process_time()
        t0 = time.monotonic()
        end = t0 + seconds
        now = t0
        while now < end:
            for p in live:
                c = p.cursor
                chunk = p.ring[c:c + batch]
                p.cursor = (c + batch) % len(p.load_pkts)
                datagrams = p.init.seal_batch(s.DATA, chunk, now)
                errors += p.sender.send(datagrams, self.gw)
                sent += len(datagrams)
            now = time.monotonic()
            if now - self.last_service >= SERVICE_S:
                self.service(0)
        elapsed = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        return {"sent_packets": sent - errors, "send_errors": errors, "size": size,
                "elapsed_s": elapsed, "worker_cpu_s": cpu, "peers": len(live),
                "destinations": sum(len(p.load_pkts) for p in live),
                "contracts": sum(len(p.dests) for p in live)}


def worker_main() -> int:
    """Runs in the client namespace: one JSON command per stdin line, one JSON reply per
    stdout line. Between commands it keeps serving the sessions and channels."""
    out = sys.stdout
    stdin_fd = sys.stdin.fileno()
    cfg = json.loads(sys.stdin.readline())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = cfg["peers"] + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(want, soft), hard), hard))
    fleet = Fleet(cfg)
    os.set_blocking(stdin_fd, False)
    fleet.sel.register(stdin_fd, selectors.EVENT_READ, None)
    reply = {"ready": True, "keygen_s": fleet.keygen_s, "peers": len(fleet.peers)}
    out.write(json.dumps(reply) + "\n")
    out.flush()
    buf = b""
    while True:
        cmd = None
        for key, _ in fleet.sel.select(SERVICE_S):
            if key.data is None:
                try:
                    chunk = os.read(stdin_fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    return 0                  # the orchestrator went away
                buf += chunk
            else:
                fleet._drain(key.data)
        fleet.service(0)
        if b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            cmd = json.loads(line)
        if cmd is None:
            continue
        c = cmd.pop("cmd")
        if c == "quit":
            return 0
        try:
            res = getattr(fleet, c)(**cmd)
        except Exception as e:  # the orchestrator reports it
            res = {"error": f"{type(e).__name__}: {e}"}
        res["rx"] = dict(fleet.rx)
        res["messages"] = dict(fleet.msgs)       # control messages received, by type, so far
        res["channels"] = {k: sum(p.channel.stats[k] for p in fleet.peers)
                           for k in ("sent", "retransmits", "received", "duplicates")}
        out.write(json.dumps(res) + "\n")
        out.flush()


# ================================================================ orchestrator (root namespace)

class Worker:
    def __init__(self, lab, cfg: dict, log_path: Path):
        env = dict(os.environ)
        from tglab.lab import REPO_ROOT
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.errlog = open(log_path, "wb")
        self.p = lab.popen(lab.client, sys.executable, "-m", "tglab.scale", "--worker",
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errlog, env=env)
        self.log_path = log_path
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.p.stdout, selectors.EVENT_READ)
        self._send(cfg)
        self.ready = self._reply(60)

    def _send(self, obj: dict) -> None:
        self.p.stdin.write((json.dumps(obj) + "\n").encode())
        self.p.stdin.flush()

    def _reply(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sel.select(min(1.0, max(0.01, deadline - time.monotonic()))):
                line = self.p.stdout.readline()
                if not line:
                    break
                res = json.loads(line)
                if "error" in res:
                    raise RuntimeError(f"worker: {res['error']}")
                return res
            if self.p.poll() is not None:
                break
        tail = self.log_path.read_text(errors="replace")[-1500:] if self.log_path.exists() else ""
        raise RuntimeError(f"worker gave no answer within {timeout:.0f} s "
                           f"(exit {self.p.poll()}): {tail}")

    def call(self, cmd: str, wait: float, **kw) -> dict:
        """Run a worker phase (kw: its arguments); wait: seconds for the answer."""
        self._send({"cmd": cmd, **kw})
        return self._reply(wait)

    @property
    def pid(self) -> int:
        """The python process itself (ip netns exec execs it, so the same pid)."""
        return self.p.pid

    def close(self) -> None:
        try:
            if self.p.poll() is None:
                self._send({"cmd": "quit"})
                self.p.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.errlog.close()


def _gateway_config(work: Path, pay_grace_s: int) -> tuple[Path, str]:
    """Only the gateway side of the pair runs: the clients are the worker's sessions."""
    from .configs import write_pair
    pair = write_pair(work, tun="tgss0", tunnel_address=TUN_ADDRESS, port=TG_PORT, gateway_extra=f"""[pricing]
default_price = "0.5"
contract_kb = 100000000
contract_time_s = 3600
grace_time_s = {pay_grace_s}
grace_kb = 100000000
[payment]
backend = "dummy"
[session]
# every fake peer sends from the client namespace's one address: the per-source
# limits of a gateway (10 per second) would measure themselves, not the gateway
handshakes_per_source_s = 100000
""")
    return pair.gateway, pair.gateway_public


def _nft_setup(lab) -> None:
    rules = (f"table inet {NFT_TABLE} {{\n"
             f"  chain pre {{ type filter hook prerouting priority -300; policy accept;\n"
             f"    ip daddr {DEST_NET} counter\n  }}\n}}\n")
    lab.run(lab.up, "nft", "-f", "-", input=rules)


def _nft_counter(lab) -> tuple[int, int]:
    out = lab.run(lab.up, "nft", "-j", "list", "table", "inet", NFT_TABLE).stdout
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if rule:
            for e in rule["expr"]:
                if "counter" in e:
                    return int(e["counter"]["packets"]), int(e["counter"]["bytes"])
    raise RuntimeError("nft counter not found in the up namespace")


def _idle_cpu(pid: int, seconds: float) -> float:
    c0, t0 = cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_s(pid) - c0) / (time.monotonic() - t0)


def _settle_rss(pid: int, seconds: float = 1.0) -> int:
    time.sleep(seconds)
    return rss_kb(pid)


def _contracts(lab, conf: Path, worker: Worker, gw_pid: int, counts: list[int], pay: bool,
               rss_settle_s: float = 0.5, listing: bool = True) -> dict:
    """Grows the contracts; ct["rss_kb"]: the gateway's RSS after them, taken before the
    listing (`contracts --json` builds every contract's record: its garbage is no contract's)."""
    c0 = cpu_s(gw_pid)
    ct = worker.call("contracts", 150, counts=counts, pay=pay, timeout=75.0)
    ct["gateway_cpu_s"] = cpu_s(gw_pid) - c0
    ct["per_s"] = ct["new_settled"] / ct["elapsed_s"] if ct["elapsed_s"] else None
    ct["rss_kb"] = _settle_rss(gw_pid, rss_settle_s)
    if not listing:
        log(f"contracts: {ct['new_settled']}/{ct['requested']} settled at the peers; "
            f"{ct['new']} new in {ct['elapsed_s']:.1f} s")
        return ct
    listed = json.loads(tg(lab, lab.gw, "contracts", "-c", str(conf), "--json", timeout=60).stdout)
    by_state: dict[str, int] = {}
    for c in listed:
        by_state[c["state"]] = by_state.get(c["state"], 0) + 1
    ct["gateway_states"] = by_state
    ct["gateway_live"] = sum(by_state.get(s, 0) for s in ("GRACE", "PAID"))
    log(f"contracts: {ct['gateway_live']}/{ct['requested']} live at the gateway ({by_state}); "
        f"{ct['new']} new in {ct['elapsed_s']:.1f} s")
    return ct


def _load(lab, worker: Worker, gw_pid: int, seconds: float, size: int, batch: int,
          dests: int = 0) -> dict:
    n0, b0 = _nft_counter(lab)
    c0 = cpu_s(gw_pid)
    ld = worker.call("load", seconds + 60, seconds=seconds, size=size, batch=batch, dests=dests)
    time.sleep(0.3)                       # what is still queued arrives
    n1, b1 = _nft_counter(lab)
    ld["gateway_cpu_s"] = cpu_s(gw_pid) - c0
    ld["received_packets"], ld["received_bytes"] = n1 - n0, b1 - b0
    t = ld["elapsed_s"]
    ld["received_pps"] = ld["received_packets"] / t
    ld["received_mbps"] = ld["received_bytes"] * 8 / t / 1e6
    ld["sent_pps"] = ld["sent_packets"] / t
    ld["sent_mbps"] = ld["sent_packets"] * size * 8 / t / 1e6
    ld["gateway_cpu_pct"] = ld["gateway_cpu_s"] / t * 100
    ld["worker_cpu_pct"] = ld["worker_cpu_s"] / t * 100
    log(f"load over {ld['destinations']} of {ld['contracts']} contracts: {ld['received_pps']:.0f} packets/s, "
        f"{ld['received_mbps']:.0f} Mbit/s received ({ld['sent_pps']:.0f}/s sent)")
    return ld


def lab_run(peers: int, contracts: int, seconds: float, size: int, pay: bool, batch: int,
            work: Path, idle_s: float = 2.5) -> dict:
    from tglab.lab import Lab
    res: dict = {"peers": peers, "contracts_requested": contracts, "pay": pay}
    lab = None
    gw_pid = None
    worker = None
    conf = None
    try:
        for attempt in (1, 2):
            lab = Lab("tgS" + os.urandom(3).hex())
            try:
                lab.build()
                break
            except Exception as e:
                lab.destroy()
                lab = None
                if attempt == 2:
                    raise
                log(f"building the lab failed ({str(e).splitlines()[0][:120]}); retrying once")
        res["lab"] = lab.prefix
        _nft_setup(lab)
        conf, gw_public = _gateway_config(work, 600)
        tg(lab, lab.gw, "serve", "-c", str(conf))
        gw_pid = int((work / "gw" / "tunnelgate.pid").read_text())
        log(f"gateway pid {gw_pid} in {lab.gw}; starting {peers} fake peers in {lab.client}")
        worker = Worker(lab, {"peers": peers, "gw_host": GW_LINK, "gw_port": TG_PORT,
                              "gw_public": gw_public, "gw_pid": gw_pid}, work / "worker.log")
        res["worker_keygen_s"] = worker.ready["keygen_s"]

        # --- handshakes and memory per peer: one peer first, so what the first handshake
        # costs once (code paths run once, the handshake thread's malloc arena, the
        # database's first pages) is not counted per peer
        warm = worker.call("handshake", 120, timeout=60.0, count=1)
        rss0 = _settle_rss(gw_pid, 0.5)
        hs = worker.call("handshake", 120, timeout=60.0)
        res["handshakes"] = hs
        log(f"handshakes: {hs['completed']}/{hs['peers']} in {hs['elapsed_s'] or 0:.3f} s "
            f"(after {warm['completed']} alone)")
        rss1 = _settle_rss(gw_pid)
        res["memory_peers"] = {"rss_before_kb": rss0, "rss_after_kb": rss1, "peers": hs["completed"],
                               "per_peer_kb": (rss1 - rss0) / max(1, hs["completed"])}
        res["per_peer_kb"] = res["memory_peers"]["per_peer_kb"]
        res["idle_cpu_peers"] = _idle_cpu(gw_pid, idle_s)

        # --- one contract per peer, throughput with N contracts
        live = hs["completed"] + warm["completed"]
        if not live:
            raise RuntimeError("no handshake completed")
        ct1 = _contracts(lab, conf, worker, gw_pid, [1] * live, pay)
        res["contracts_1"] = ct1
        res["idle_cpu_1"] = _idle_cpu(gw_pid, idle_s)
        res["load_1"] = _load(lab, worker, gw_pid, seconds, size, batch)

        # --- M contracts: memory per contract, throughput with M contracts
        # in two halves: the first grows the gateway to what a burst of new contracts
        # takes at its peak (the peers open up to 64 each at once: thousands of proposals,
        # messages, events and records alive together, whose freed room the heap keeps);
        # the second, the same burst again, measures what a contract itself holds
        rss_b = _settle_rss(gw_pid, 1.0)
        counts = [max(1, c) for c in split(contracts, live)]
        half = _contracts(lab, conf, worker, gw_pid, [max(1, c // 2) for c in counts], pay,
                          rss_settle_s=1.5, listing=False)
        rss_h = half["rss_kb"]
        ct = _contracts(lab, conf, worker, gw_pid, counts, pay, rss_settle_s=1.5)
        rss_m = ct["rss_kb"]
        for k in ("new", "elapsed_s", "gateway_cpu_s", "new_settled", "first_packets", "resent"):
            ct[k] += half[k]
        ct["per_s"] = ct["new_settled"] / ct["elapsed_s"] if ct["elapsed_s"] else None
        res["contracts"] = ct
        new = max(1, ct["gateway_live"] - ct1["gateway_live"])
        new2 = max(1, ct["gateway_live"] - ct1["gateway_live"] - half["new_settled"])
        res["memory_contracts"] = {"rss_before_kb": rss_b, "rss_half_kb": rss_h, "rss_after_kb": rss_m,
                                   "new_contracts": new, "second_half": new2,
                                   "per_contract_kb": (rss_m - rss_h) / new2,
                                   "per_contract_all_kb": (rss_m - rss_b) / new}
        res["per_contract_kb"] = res["memory_contracts"]["per_contract_kb"]
        res["idle_cpu_contracts"] = _idle_cpu(gw_pid, idle_s)
        log(f"gateway idle CPU: {res['idle_cpu_1'] * 100:.0f}% with {ct1['gateway_live']} contracts, "
            f"{res['idle_cpu_contracts'] * 100:.0f}% with {ct['gateway_live']}")
        res["load"] = _load(lab, worker, gw_pid, seconds, size, batch)
        # the flows of load_1 again, now among M contracts: what the number of
        # contracts costs, apart from spreading traffic over more destinations
        res["load_same"] = _load(lab, worker, gw_pid, seconds, size, batch, dests=1)
        return res
    finally:
        if worker is not None:
            worker.close()
        if lab is not None:
            if conf is not None:
                tg_down(lab, lab.gw, conf, gw_pid)
            lab.destroy()


# ================================================================ micro-benchmark (no network)

def _time_calls(engine, seq, now: float, repeats: int) -> tuple[float, float]:
    """Best-of ns per outbound and per inbound call over seq."""
    out, inb = engine.outbound, engine.inbound
    pkt = bytes(100)
    best_out = best_in = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            for peer, dst in seq:
                out(peer, dst, 100, pkt, now)
            t1 = time.perf_counter_ns()
            for peer, dst in seq:
                inb(peer, dst, 100, now)
            t2 = time.perf_counter_ns()
            best_out = min(best_out, (t1 - t0) / len(seq))
            best_in = min(best_in, (t2 - t1) / len(seq))
    finally:
        gc.enable()
    return best_out, best_in


HOT_FLOWS = 10


def micro(sizes=MICRO_SIZES, calls: int = MICRO_CALLS, repeats: int = 3) -> dict:
    """One engine grown through `sizes`; at each size, per-call time of outbound/inbound
    (a) over the same HOT_FLOWS flows (the first contracts made): the lookup and metering
    cost as the number of contracts grows, and (b) uniformly at random over all flows:
    adds the cache/TLB cost of touching a working set that grows with the contracts."""
    from tunnelgate.meter import FORWARD
    rows = []
    now = 1000.5
    b = EngineBuilder()
    rnd = random.Random(1)
    for n in sorted(sizes):
        b.grow(n)
        engine, flows = b.engine, b.flows
        hot = flows[:HOT_FLOWS]
        hot_seq = [hot[i % len(hot)] for i in range(calls)]
        all_seq = [flows[rnd.randrange(len(flows))] for _ in range(calls)]
        hot_out, hot_in = _time_calls(engine, hot_seq, now, repeats)
        all_out, all_in = _time_calls(engine, all_seq, now, repeats)
        forwarded = all(engine.outbound(p, d, 1, b"", now) == FORWARD for p, d in all_seq[:1000])
        rows.append({"contracts": n, "live": sum(len(b.live) for b in engine.books.values()), "peers": len(engine.meter.peers),
                     "hot_outbound_ns": hot_out, "hot_inbound_ns": hot_in,
                     "all_outbound_ns": all_out, "all_inbound_ns": all_in, "all_forwarded": forwarded})
        del hot_seq, all_seq
    r0, r1 = rows[0], rows[-1]
    res = {"rows": rows, "calls": calls, "repeats": repeats, "hot_flows": HOT_FLOWS,
           "hot_outbound_ratio": r1["hot_outbound_ns"] / r0["hot_outbound_ns"],
           "hot_inbound_ratio": r1["hot_inbound_ns"] / r0["hot_inbound_ns"],
           "all_outbound_ratio": r1["all_outbound_ns"] / r0["all_outbound_ns"],
           "all_inbound_ratio": r1["all_inbound_ns"] / r0["all_inbound_ns"]}
    del b, engine, flows
    # engine memory per contract (Python allocations, tracemalloc), at 10,000 contracts
    import tracemalloc
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    e2 = EngineBuilder().grow(10_000)
    gc.collect()
    res["engine_bytes_per_contract"] = (tracemalloc.get_traced_memory()[0] - base) / 10_000
    tracemalloc.stop()
    del e2
    return res


# ================================================================ output

def _f(x, spec=".0f", none="-") -> str:
    return none if x is None else format(x, spec)


def table(res: dict) -> str:
    lines = []
    rows: list[tuple[str, str]] = []
    lr = res.get("lab_result")
    if lr:
        n = lr["peers"]
        hs = lr.get("handshakes")
        if hs:
            rows.append(("handshakes/s", f"{_f(hs['per_s'])}  ({hs['completed']}/{hs['peers']} completed "
                         f"in {_f(hs['elapsed_s'], '.3f')} s, {hs['retries']} retries; gateway CPU "
                         f"{_f(hs['gateway_cpu_ms_per_handshake'], '.2f')} ms/handshake)"))
        mp = lr.get("memory_peers")
        if mp:
            rows.append(("memory per peer", f"{_f(mp['per_peer_kb'], '.1f')} KB  (gateway RSS "
                         f"{mp['rss_before_kb'] / 1024:.1f} -> {mp['rss_after_kb'] / 1024:.1f} MB)"))
        ct = lr.get("contracts")
        if ct:
            st = ", ".join(f"{k} {v}" for k, v in sorted(ct["gateway_states"].items()))
            rows.append(("contracts created", f"{ct['gateway_live']}/{ct['requested']} live at the gateway "
                         f"({st})  ({ct['new']} new in {ct['elapsed_s']:.1f} s = {_f(ct['per_s'])}/s, each "
                         f"PROPOSE -> ACCEPT{' -> PAY -> PAID' if lr.get('pay') else ''}; "
                         f"gateway CPU {ct['gateway_cpu_s']:.1f} s)"))
        mc = lr.get("memory_contracts")
        if mc:
            rows.append(("memory per contract", f"{_f(mc['per_contract_kb'], '.2f')} KB  (gateway RSS "
                         f"{mc['rss_half_kb'] / 1024:.1f} -> {mc['rss_after_kb'] / 1024:.1f} MB for the second "
                         f"{mc['second_half']}; {_f(mc['per_contract_all_kb'], '.2f')} KB a contract over "
                         f"all, with the burst's peak: {mc['rss_before_kb'] / 1024:.1f} -> "
                         f"{mc['rss_after_kb'] / 1024:.1f} MB for "
                         f"{mc['new_contracts']} contracts)"))
        if "idle_cpu_contracts" in lr:
            rows.append(("gateway idle CPU", f"{lr['idle_cpu_peers'] * 100:.1f}% with {n} peers, "
                         f"{lr['idle_cpu_1'] * 100:.1f}% with {lr['contracts_1']['gateway_live']} contracts, "
                         f"{lr['idle_cpu_contracts'] * 100:.1f}% with {lr['contracts']['gateway_live']} "
                         f"contracts (no traffic: timers)"))
        for key in ("load_1", "load", "load_same"):
            ld = lr.get(key)
            if not ld:
                continue
            contracts = ld.get("contracts", ld["destinations"])
            what = (f"{contracts} contracts" if contracts == ld["destinations"]
                    else f"{contracts} contracts, traffic to {ld['destinations']}")
            rows.append((f"throughput, {what}",
                         f"{ld['received_mbps']:.0f} Mbit/s, {ld['received_pps']:.0f} packets/s received "
                         f"upstream  ({ld['peers']} peers sending {ld['size']}-byte packets for "
                         f"{ld['elapsed_s']:.1f} s round-robin over {ld['destinations']} destinations; "
                         f"sent {ld['sent_pps']:.0f}/s; "
                         f"gateway CPU {ld['gateway_cpu_pct']:.0f}%, sender CPU {ld['worker_cpu_pct']:.0f}%)"))
    if res.get("lab_error"):
        rows.append(("lab", f"FAILED: {res['lab_error'].splitlines()[0][:200]}"))
    if rows:
        w = max(len(k) for k, _ in rows)
        lines.append(f"| {'measure'.ljust(w)} | value |")
        lines.append(f"|{'-' * (w + 2)}|-------|")
        lines += [f"| {k.ljust(w)} | {v} |" for k, v in rows]
    mi = res.get("micro")
    if mi:
        lines.append("")
        lines.append(f"Seller.outbound/inbound per packet, no network (best of {mi['repeats']} x "
                     f"{mi['calls']:,} calls; one engine grown to each size, 100 contracts per peer):")
        lines.append("| contracts | peers | same 10 flows out/in ns | all flows at random out/in ns |")
        lines.append("|----------:|------:|------------------------:|------------------------------:|")
        for r in mi["rows"]:
            lines.append(f"| {r['contracts']:>9,} | {r['peers']:>5,} | "
                         f"{r['hot_outbound_ns']:>11.0f} / {r['hot_inbound_ns']:<9.0f} | "
                         f"{r['all_outbound_ns']:>14.0f} / {r['all_inbound_ns']:<13.0f} |")
        lines.append(f"largest/smallest: same flows x{mi['hot_outbound_ratio']:.2f} out, "
                     f"x{mi['hot_inbound_ratio']:.2f} in (lookup + metering); all flows at random "
                     f"x{mi['all_outbound_ratio']:.2f} out, x{mi['all_inbound_ratio']:.2f} in (adds cache/TLB "
                     f"misses of a working set of every contract)")
        lines.append(f"engine memory {mi['engine_bytes_per_contract'] / 1000:.2f} KB per contract "
                     f"(tracemalloc, 10,000 contracts)")
    elif res.get("micro_error"):
        lines.append(f"micro-benchmark FAILED: {res['micro_error']}")
    return "\n".join(lines)


def command_line(a) -> str:
    parts = ["scripts/bench", "--peers", str(a.peers), "--contracts", str(a.contracts)]
    if a.time != 5.0:
        parts += ["--time", f"{a.time:g}"]
    if a.size != 1400:
        parts += ["--size", str(a.size)]
    if a.no_pay:
        parts.append("--no-pay")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return worker_main()
    ap = argparse.ArgumentParser(prog="scripts/bench --peers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, required=True, help="fake peers handshaking with one gateway")
    ap.add_argument("--contracts", type=int, default=10_000, help="contracts spread over the peers (10000)")
    ap.add_argument("--time", type=float, default=5.0, help="seconds of load (5)")
    ap.add_argument("--size", type=int, default=1400, help="inner IP length of load packets (1400; mtu 1420)")
    ap.add_argument("--batch", type=int, default=32, help="packets sealed and sent per peer per turn (32)")
    ap.add_argument("--no-pay", action="store_true", help="accept only; contracts run in grace (600 s)")
    ap.add_argument("--micro", default=",".join(map(str, MICRO_SIZES)),
                    help="contract counts of the engine micro-benchmark")
    ap.add_argument("--no-micro", action="store_true", help="skip the engine micro-benchmark")
    ap.add_argument("--no-lab", action="store_true", help="only the engine micro-benchmark (no root needed)")
    ap.add_argument("--json", type=Path, help="write all numbers to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (gateway log, worker log)")
    a = ap.parse_args(argv)
    if a.peers < 1 or a.contracts < 0 or a.contracts > a.peers * 65536:
        ap.error("--peers >= 1 and 0 <= --contracts <= peers * 65536")
    if not 28 <= a.size <= 1420:
        ap.error("--size between 28 and 1420 (the gateway's tunnel MTU)")
    if not a.no_lab:
        if os.geteuid() != 0:
            print("bench: run as root (it builds network namespaces)", file=sys.stderr)
            return 1
        for tool in ("ip", "nft"):
            if not shutil.which(tool):
                print(f"bench: {tool} missing; run scripts/setup", file=sys.stderr)
                return 1
    started = time.monotonic()
    cmd = command_line(a)
    res: dict = {"command": cmd, "version": tg_version(),
                 "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                             "python": platform.python_version()}}
    print(f"versions: {platform.node()} kernel {platform.release()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {res['version']}")
    print(f"command: {cmd}", flush=True)
    if not a.no_lab:
        work = Path(tempfile.mkdtemp(prefix="tgscale-"))
        try:
            log(f"lab: {a.peers} peers, {a.contracts} contracts, {a.time:g} s of load")
            res["lab_result"] = lab_run(a.peers, a.contracts, a.time, a.size, not a.no_pay, a.batch, work)
        except Exception as e:
            res["lab_error"] = f"{type(e).__name__}: {e}"
            log(f"lab FAILED: {res['lab_error']}")
            for name in ("gw/tunnelgate.log", "worker.log"):
                p = work / name
                if p.exists():
                    log(f"--- {name} ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:]))
        finally:
            if a.keep:
                log(f"work directory kept: {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    if not a.no_micro:
        try:
            sizes = tuple(int(x) for x in a.micro.split(",") if x.strip())
            log(f"engine micro-benchmark: {', '.join(map(str, sizes))} contracts")
            res["micro"] = micro(sizes)
        except Exception as e:
            res["micro_error"] = f"{type(e).__name__}: {e}"
    res["seconds"] = time.monotonic() - started
    print()
    print(table(res))
    log(f"done in {res['seconds']:.0f} s")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")
        print(f"\nnumbers written to {a.json}")
    ok = ("lab_result" in res or a.no_lab) and ("micro" in res or a.no_micro)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
