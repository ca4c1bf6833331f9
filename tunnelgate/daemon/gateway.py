"""`tunnelgate serve`: accepts clients, forwards their traffic to its TUN
(the kernel masquerades it out of the upstream interface) and back.

Over 600 lines: the glue of one role (set-up, control requests, the engine's output,
payments, leases, adverts, status); each concern's logic lives in its own module
(leases.py, handshakes.py, advertise.py, market.py, protocol/seller*.py) and what
remains here is the wiring between them."""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import time

import asyncio
import dataclasses
import secrets
import threading
from collections import deque

from .. import offload, session as sess
from ..net import setup as netsetup
from ..payments import Terms, Verdict, load_backend
from ..protocol import events as E
from ..protocol import messages as msgs
from ..protocol.advert import sign_public
from ..protocol import seller as gwp
from ..tun import Tun
from . import datapath_gateway
from ..config import peer_address6
from ..money import format_price, parse_price
from ..offload.chunks import FEATURE_CHUNKS
from ..wire import FEATURE_SIZED
from .advertise import Advertising
from .base import Daemon, features as _features, udp_socket
from .control import ControlError
from .dataplane import DataPlane
from .handshakes import Handshakes
from .leases import Leases
from .links import BuyerLink, Links
from .lograte import LogLimiter
from .market import Channels, EventLog, Saver, peer_text
from .recovery import reconcile

log = logging.getLogger("tunnelgate.gateway")

ACCOUNT_POOL = 8          # fresh per-contract accounts (bitcoin addresses) kept ready
ACCOUNT_WAIT_S = 10       # at start: how long to wait for the first ones


class JournalCredit:
    """The engine's credit book (see protocol.seller.MemoryCredit), kept in the payment
    journal: durable, so a restart keeps every peer's prepaid credit."""

    def __init__(self, journal):
        self.journal = journal

    def balance(self, peer: bytes) -> int:
        return self.journal.credit_balance(peer_text(peer))

    def spend(self, peer: bytes, msat: int, contract_id: str) -> int | None:
        return self.journal.spend_credit(peer_text(peer), msat, contract_id)


class AccountPool:
    """Fresh payment accounts (a new bitcoin address per contract), asked from the backend
    ahead of time: the engine proposes synchronously, the backend answers over RPC.
    ``take(contract_id)`` is called under the engine lock from any thread; it records the
    account for the contract in the journal and asks for a refill on the asyncio loop."""

    def __init__(self, payee, loop, size: int = ACCOUNT_POOL):
        self.payee, self.loop, self.size = payee, loop, size
        self.ready: deque[tuple[str, str, float]] = deque()   # (placeholder id, account, made at)
        self._refilling = False
        self.errors = 0
        self.last_error = ""
        # accounts that expire (Lightning invoices) are not handed out past this age
        self.max_age_s = getattr(payee, "account_max_age_s", None)

    def take(self, contract_id: str) -> str | None:
        account = None
        while self.ready:
            tag, account, made = self.ready.popleft()
            if self.max_age_s is None or time.monotonic() - made < self.max_age_s:
                break
            account = None
        if len(self.ready) < self.size // 2:
            self.loop.call_soon_threadsafe(self.refill)
        if account is None:
            return None
        self.payee.journal.set_account(contract_id, self.payee.name, account)
        return account

    def refill(self) -> None:
        if not self._refilling:
            self._refilling = True
            self.loop.create_task(self._refill())

    async def _refill(self) -> None:
        try:
            while len(self.ready) < self.size:
                tag = "pool-" + secrets.token_hex(8)
                try:
                    account = await self.payee.account_for(tag)
                except Exception as e:  # the node may be down: say so, try again later
                    self.errors += 1
                    if str(e) != self.last_error:
                        log.warning("cannot get a fresh payment account: %s", e)
                    self.last_error = str(e)
                    await asyncio.sleep(2)
                    break
                self.ready.append((tag, account, time.monotonic()))
                self.last_error = ""
        finally:
            self._refilling = False



class GatewayDaemon(Daemon):
    role = "gateway"

    def __init__(self, cfg, private_key: bytes, verbose: bool = False):
        super().__init__(cfg, private_key, verbose)
        self.responder: sess.Responder | None = None    # every peer's session (setup: needs the store)
        # one BuyerLink per peer that has a tunnel address; the router holds the addresses
        # (a packet from the TUN finds its peer by destination)
        self.links = Links()
        self.payee = None
        self.accounts: AccountPool | None = None
        self.verifying: dict[str, asyncio.Task] = {}
        self.channels = Channels(self._send_control)
        self._write_warned = 0.0
        self.adverts: Advertising | None = None
        # in every handshake response: the key the gateway's adverts are signed with, bound
        # to this Noise key by the handshake itself (protocol/advert.py)
        self.sign_key = base64.b64encode(sign_public(private_key)).decode()

    async def setup(self) -> None:
        cfg = self.cfg
        # the INIT timestamps earlier runs answered: their INITs stay replays (see _handshake)
        known = {base64.b64decode(k): ts for k, ts in self.store.handshake_timestamps().items()}
        self.responder = sess.Responder(self.private_key, cfg.session.timing, timestamps=known,
                                        lock=threading.Lock())
        for key_b64, addr in self.store.peer_addresses().items():
            self._remember(base64.b64decode(key_b64), addr)
        self.leases = Leases(self.store, cfg.address, cfg.lease_idle_s)
        self._leases_at = 0.0
        self._protected_at: tuple[float, set[str]] = (-1e9, set())
        self._lease_log = LogLimiter()      # a stream of strangers costs a few lines
        await self._setup_market()
        self.tun = Tun(cfg.tun, cfg.mtu)
        await self.net(netsetup.setup_gateway, self.paths["net"], cfg.tun, str(cfg.address),
                       cfg.upstream_interface, cfg.mtu, str(cfg.address6) if cfg.address6 else None,
                       cfg.listen[1], cfg.session.handshakes_per_source_s)
        self.sock = udp_socket(cfg.listen)
        self.adverts = Advertising(cfg, self.private_key, self.store, lambda: self.engine.pricing.default_price)
        await self.adverts.start()
        # key exchanges run on their own thread, behind MAC1, cookies and rate limits
        self.handshakes = Handshakes(self.responder, self._handshake, self.sock.sendto,
                                     per_source=cfg.session.handshakes_per_source_s)
        loop = self.loop
        self.plane = DataPlane(
            sock=self.sock, tun=self.tun, receiver=self.responder, links=self.links,
            engine=self.engine, elock=self.elock, saver=self.saver, stats=self.stats,
            warmth=self.warmth, session_lock=self.lock,
            on_control=lambda frames: loop.call_soon_threadsafe(self._control_in, frames),
            on_handshake=lambda init, now: self.handshakes.submit(init), persist=self.persist)
        self.ready = True
        log.info("listening on %s:%d, tunnel %s %s%s, upstream %s", *cfg.listen, cfg.tun, cfg.address,
                 f" {cfg.address6}" if cfg.address6 else "", cfg.upstream_interface)

    async def _setup_market(self) -> None:
        cfg = self.cfg
        payment = cfg.payment
        self.payee = load_backend(payment.backend, {**payment.settings_dict(), "state_dir": str(cfg.node.state_dir)},
                                  role="payee")
        if getattr(self.payee, "per_contract_account", False):
            # a fresh account (bitcoin address) per contract, from a pool filled ahead
            account = ""
            self.accounts = AccountPool(self.payee, self.loop)
            self.accounts.refill()
            deadline = time.monotonic() + ACCOUNT_WAIT_S
            while not self.accounts.ready and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if not self.accounts.ready:
                log.warning("no fresh payment account yet (%s); contracts are proposed once the "
                            "backend answers", self.accounts.last_error or "backend slow")
        else:
            account = await self.payee.account_for("any")
        # the gateway's own tunnel address costs nothing to reach (nothing is forwarded), so
        # `ping <gateway address>` works before any contract, unless the operator prices it
        routes = cfg.pricing.prefix_prices
        for own in [f"{cfg.address.ip}/32"] + ([f"{cfg.address6.ip}/128"] if cfg.address6 else []):
            if not any(prefix == own for prefix, _ in routes):
                routes = (*routes, (own, 0))
        pricing = dataclasses.replace(cfg.pricing, payment_methods=(payment.backend,), account=account,
                                      prefix_prices=routes)
        self.engine = gwp.Seller(pricing, new_id=lambda: secrets.token_hex(8),
                                        account_for=self.accounts.take if self.accounts else None,
                                        credit=JournalCredit(self.payee.journal),
                                        own_key=sess.public_key(self.private_key), pricer=self._pricer())
        self.events = EventLog(self.store)
        self.saver = Saver(self.store, self.engine, self.elock)
        if self.saver.restore(time.time()):
            log.info("resumed %d contracts from %s", len(self.engine.contracts()), self.paths["db"])
        if not getattr(self.payee, "real_money", True):
            log.warning("payment backend %r: %s", payment.backend,
                        getattr(self.payee, "notice", "no real payment happens"))
        self._recover_payments()

    def _recover_payments(self) -> None:
        """After a restart: no payment taken is lost. A confirmed payment not yet applied (we
        stopped between taking the money and recording the contract paid) pays its contract if
        this run still has it unpaid, else becomes credit for the peer; a pending one is
        checked again; a contract paid from credit stays paid."""
        journal = self.payee.journal
        for rec in journal.records("pending"):
            if rec.contract_id not in self.verifying:
                self.verifying[rec.contract_id] = self.loop.create_task(self._resume(rec))
        for rec in journal.unapplied():
            self._settle(rec.contract_id, rec.peer, rec.amount_msat, recovered=True)
        self._reconcile(journal)

    def _reconcile(self, journal) -> None:
        """The journal is the authority on what was paid (see recovery.reconcile)."""
        for cid, peer, msat, left, why in reconcile(journal, self.store.contract_states(), self.engine,
                                                    self.elock, time.time()):
            self.events.note(self._credit_event(cid, peer, msat, left, why))

    async def _resume(self, rec) -> None:
        cid = rec.contract_id
        try:
            verdict = await self._poll_until_final(cid, await self.payee.poll(cid))
            await self._finish(cid, rec.peer, verdict, cost=None)
        finally:
            self.verifying.pop(cid, None)

    async def _poll_until_final(self, cid: str, verdict: Verdict) -> Verdict:
        deadline = time.monotonic() + self.engine.pricing.grace_time_s + 60
        try:
            while verdict.status == "pending" and time.monotonic() < deadline and self.running:
                await asyncio.sleep(0.5)
                verdict = await self.payee.poll(cid)
        except Exception as e:  # a backend failure must not take the daemon down
            log.warning("checking the payment for %s failed: %s", cid, e)
            verdict = Verdict("invalid", f"verification failed: {e}")
        return verdict

    async def _finish(self, cid: str, peer: str, verdict: Verdict, cost: int | None) -> None:
        now = time.time()
        if verdict.status == "confirmed":
            plan = self._settle_plan(cid, peer, verdict.amount_msat, cost, False)
            # the journal's fsync off the event loop; journal first, then the engine, as before
            left = await self.payee.journal.batched(self.payee.journal.settle, *plan[1])
            self._settled(plan, left)
        elif verdict.status == "invalid":
            with self.elock:
                self.engine.payment_failed(cid, verdict.reason or "invalid payment", now)
        self._pump()

    def _settle(self, cid: str, peer: str, amount_msat: int, cost: int | None = None,
                recovered: bool = False) -> None:
        """A confirmed payment of amount_msat for contract cid: the contract is paid and what
        exceeds its cost becomes the peer's credit; a contract this run does not have (lost in
        a crash) or one that is already paid otherwise turns the whole payment into credit.
        Journal first (one transaction), then the engine: a crash in between is settled again
        at the next start (the credit is keyed by contract, so never twice)."""
        plan = self._settle_plan(cid, peer, amount_msat, cost, recovered)
        self._settled(plan, self.payee.journal.settle(*plan[1]))

    def _settle_plan(self, cid: str, peer: str, amount_msat: int, cost: int | None, recovered: bool):
        """What _settle writes to the journal: (usable, journal.settle args, msat credited,
        the cost when usable else recovered)."""
        with self.elock:
            c = self.engine.find(cid)
            if c is not None and cost is None:
                cost = c.cost_msat
            # a revoked contract was not honoured: its late payment is the peer's credit
            usable = (c is not None and (not c.paid or not c.credit) and cost is not None
                      and c.state is not gwp.State.REVOKED)
        if usable:
            surplus = max(0, amount_msat - cost)
            return (True, (cid, peer, surplus, f"surplus:{cid}",
                           "paid beyond the contract's cost (prepaid credit)"), surplus, amount_msat - surplus)
        return (False, (cid, peer, amount_msat, f"recovered:{cid}",
                        "payment taken for a contract that could not use it"), amount_msat, recovered)

    def _settled(self, plan, left: int) -> None:
        usable, (cid, peer, *_), amount_msat, recovered = plan
        if usable:
            with self.elock:
                c = self.engine.find(cid)
                # revoked (grace ran out) while the journal was written off the loop: the
                # payment is the peer's credit, as for any payment of a revoked contract
                late = c is not None and c.state is gwp.State.REVOKED and not c.paid
                if not late:
                    self.engine.payment_confirmed(cid, time.time(), credit_msat=left)
            if amount_msat:
                self.events.note(self._credit_event(cid, peer, amount_msat, left, "prepaid credit"))
            if late:
                cost = recovered
                left = self.payee.journal.settle(cid, peer, cost, f"recovered:{cid}",
                                                 "payment taken for a contract that could not use it")
                self.events.note(self._credit_event(cid, peer, cost, left,
                                                    "payment for a revoked contract: kept as credit"))
        else:
            self.events.note(self._credit_event(
                cid, peer, amount_msat, left, "payment taken for a contract this gateway no longer "
                "has (restart): kept as credit for the peer" if recovered else
                "payment for a contract already paid: kept as credit"))

    def _write(self, taken, events=None) -> None:
        try:
            self.saver.write(taken, events)
        except Exception as e:
            self._write_failed(e)

    @staticmethod
    def _credit_event(cid: str, peer: str, amount: int, left: int, why: str) -> dict:
        return {"ts": time.time(), "kind": "credit", "contract_id": cid, "peer": peer, "destination": None,
                "reason": why, "amount_msat": amount, "data": {"credit_msat": left}}

    def _remember(self, peer: bytes, addr: str) -> BuyerLink:
        """The link of a peer given tunnel address `addr` (made, or its addresses updated)."""
        ip = ipaddress.IPv4Address(addr)
        # (an address stored under an earlier, different [network] address has no IPv6 twin)
        packed6 = (self._address6(addr).packed if self.cfg.address6 and ip in self.cfg.address.network
                   else None)
        link = self.links.get(peer)
        if link is None or (link.address, link.address6) != (ip.packed, packed6):
            chunks = link is not None and link.chunks
            channel = link.channel if link is not None else None
            link = BuyerLink(peer, self.responder, ip.packed, packed6, channel)
            link.chunks = chunks
            self.links.add(link)
        return link

    def _forget(self, key_b64: str) -> None:
        """A reclaimed lease: the old key's session and address mapping go, so its traffic
        cannot use the address's next holder (it may handshake again for a new lease)."""
        peer = base64.b64decode(key_b64)
        self.responder.forget(peer)
        self.links.remove(peer)
        self._lease_log.log(log, logging.INFO, "reclaimed", time.monotonic(),
                            "peer %s: address lease reclaimed (idle)", key_b64)

    def _protected(self) -> set[str]:
        """Keys whose lease is never reclaimed: a live paid contract (or one whose payment
        is being verified) or prepaid credit."""
        now = time.monotonic()
        if now - self._protected_at[0] < 1.0:      # a stream of handshakes asks for it often
            return self._protected_at[1]
        with self.elock:
            cs = self.engine.contract_list()
        verifying = set(self.verifying)
        keys = {peer_text(c.peer) for c in cs if c.state is gwp.State.PAID or c.contract_id in verifying}
        keys |= set(self.payee.journal.credit_balances())
        self._protected_at = (now, keys)
        return keys

    def _lease_tick(self, wall: float) -> None:
        """Once a second: renew the leases of peers that sent something, reclaim idle ones."""
        if wall - self._leases_at < 1.0:
            return
        self._leases_at = wall
        signatures = {peer_text(p): self.responder.activity(p) for p in self.responder.peers()}
        for key in self.leases.tick(wall, signatures, self._protected):
            self._forget(key)

    def _address6(self, addr: str) -> ipaddress.IPv6Address:
        return peer_address6(self.cfg.address, self.cfg.address6, addr)

    def handlers(self) -> dict:
        return {**super().handlers(),
                "set": self.cmd_set, "advert": lambda req: self.adverts.view()}

    def cmd_set(self, req: dict) -> dict:
        """Live prices (msat/KB as decimal strings): default_price, floor_price."""
        changes = {}
        for key, value in req.items():
            if key == "cmd":
                continue
            if key not in ("default_price", "floor_price"):
                raise ControlError("bad_setting", f"unknown setting {key!r}; settable: default_price, floor_price")
            try:
                changes[key] = parse_price(value)
            except ValueError as e:
                raise ControlError("bad_value", f"{key}: {e}") from None
        with self.elock:
            pricing = self.engine.pricing
            floor = changes.get("floor_price", pricing.floor_price)
            if floor > changes.get("default_price", pricing.default_price):
                raise ControlError("bad_value", "floor_price would be above default_price")
            self.engine.set_prices(**changes)
        for key, value in changes.items():
            self.events.say("setting", f"{key} = {format_price(value)}")
        if "default_price" in changes:
            self.adverts.refresh()
        return self._pricing()

    def _pricing(self) -> dict:
        p = self.engine.pricing
        return {"default_price": format_price(p.default_price), "floor_price": format_price(p.floor_price),
                "contract_kb": p.contract_kb, "contract_time_s": p.contract_time_s,
                "grace_time_s": p.grace_time_s, "grace_kb": p.grace_kb}

    def workers(self):
        return [("udp-to-tun", datapath_gateway.udp_to_tun),
                ("tun-to-udp", datapath_gateway.tun_to_udp),
                ("handshakes", lambda plane: self.handshakes.run(lambda: plane.running))]

    async def stopping(self) -> None:
        if self.adverts is not None:
            await self.adverts.close()

    def shutdown(self) -> None:
        if self.saver is not None:
            self.shutdown_market()
        for obj in (self.sock, self.tun):
            if obj is not None:
                obj.close()

    # --- data path ------------------------------------------------------------------

    def _handshake(self, hs, now: float) -> None:
        """A peer's handshake initiation past MAC1, cookies and rate limits, on the handshake
        worker (daemon/handshakes.py; the udp-to-tun thread hands it over through plane.on_handshake)."""
        key_b64 = base64.b64encode(hs.peer_public).decode()
        try:
            # the timestamp rides on the write the handshake makes anyway, before the answer:
            # a restart, even kill -9 right after, never answers this INIT again
            addr, reclaimed = self.leases.acquire(key_b64, time.time(), hs.timestamp, self._protected)
        except Exception as e:
            log.warning("refusing peer %s: %s", key_b64, e)
            self.stats["handshake_refused"] += 1
            return
        for key in reclaimed:
            self._forget(key)
        if addr is None:
            self._lease_log.log(log, logging.WARNING, "full", time.monotonic(),
                                "refusing peer %s: address pool %s is full (%d leases, all held by "
                                "paying or active peers); use a larger [network] address prefix",
                                key_b64, self.cfg.address.network, self.leases.pool_size)
            self.stats["handshake_refused"] += 1
            return
        chunks = offload.chunks_enabled()
        info = {"address": f"{addr}/{self.cfg.address.network.prefixlen}",
                "gateway": str(self.cfg.address.ip),
                "features": ([FEATURE_CHUNKS] if chunks else []) + [FEATURE_SIZED],
                "sign_key": self.sign_key}
        if self.cfg.address6:
            info["address6"] = f"{self._address6(addr)}/{self.cfg.address6.network.prefixlen}"
            info["gateway6"] = str(self.cfg.address6.ip)
        payload = json.dumps(info).encode()
        with self.lock:
            datagram = self.responder.accept(hs, now, os.urandom(sess.RAND_BYTES), payload)
        link = self._remember(hs.peer_public, addr)
        self.links.set_chunks(link, chunks and FEATURE_CHUNKS in _features(hs.payload))
        link.channel = self.channels.get(hs.peer_public)
        self.stats["handshakes"] += 1
        try:
            self.sock.sendto(datagram, hs.addr)
        except OSError as e:
            self.stats["send_errors"] += 1
            log.debug("handshake response to %s failed: %s", hs.addr, e)
        log.info("peer %s handshake from %s:%d, address %s", key_b64, *hs.addr[:2], addr)

    # --- timers and status ---------------------------------------------------------

    def tick(self, now: float) -> None:
        with self.lock:
            out = self.responder.poll(now)
        for addr, datagram in out:
            try:
                self.sock.sendto(datagram, addr)
            except OSError:
                self.stats["send_errors"] += 1
        wall = time.time()
        self._pump(poll=wall)
        try:
            self.saver.maybe_save(wall)         # byte counters, batched
        except Exception as e:
            self._write_failed(e)
        self.adverts.tick(wall)
        try:
            self._lease_tick(wall)
        except Exception as e:
            self._lease_log.log(log, logging.ERROR, "tick", time.monotonic(), "cannot update the address "
                                "leases in %s: %s; check the disk", self.paths["db"], e)
        self.events.flush()

    def next_deadline(self) -> float | None:
        return min((t for t in (self.responder.next_deadline(), self.channels.next_deadline(),
                                self.engine_deadline(time.monotonic())) if t is not None), default=None)

    def persist(self) -> None:
        """plane.persist: a contract ended while metering; write that through before forwarding
        more, so it cannot come back after a crash (a write per contract end, off the lock).
        Then the control thread takes the engine's output (the next contract's start,
        its events) now, not when it next wakes."""
        try:
            self.saver.write_through()
        except Exception as e:
            self._write_failed(e)
        self.loop.call_soon_threadsafe(self._control_in, [])

    def _write_failed(self, e: Exception) -> None:
        now = time.monotonic()
        if now - self._write_warned >= 10:      # at most one warning per 10 s
            self._write_warned = now
            log.error("cannot save the contracts to %s: %s; check the disk (contracts changed since "
                      "are lost if the gateway stops)", self.paths["db"], e)

    def shutdown_market(self) -> None:
        self.saver.maybe_save(time.time(), force=True)
        self.leases.save(time.time())
        self.events.flush()

    # --- contracts: control messages, payments ------------------------------------------

    def _send_control(self, peer: bytes, frame: bytes) -> None:
        datagram = self.responder.seal(peer, sess.CONTROL, frame, time.monotonic())
        endpoint = self.responder.endpoint(peer)
        if datagram is None or endpoint is None:
            return
        try:
            self.sock.sendto(datagram, endpoint)
        except OSError:
            self.stats["send_errors"] += 1

    def _control_in(self, frames: list[tuple[bytes, bytes]]) -> None:
        now = time.monotonic()
        messages = []
        for peer, frame in frames:
            for message in self.channels.receive(peer, frame, now):
                if type(message) is msgs.AdvertRequest:     # not the engine's: no contract
                    answer = self.adverts.on_request(peer, now)
                    if answer is not None:
                        self.channels.send(peer, answer)
                else:
                    messages.append((peer, message))
        self._pump(messages)

    def _pump(self, messages: list = (), poll: float | None = None) -> None:
        """Feeds the engine (messages, a poll), then moves its output: changed records to the
        database first (write-through: a contract accepted, paid, ended, revoked or queued is
        on disk before PAID or any message or released packet makes it count), then messages
        to channels, released packets to the TUN, events to the log and the payment backend.
        A message's change (an ACCEPT arms grace) is written before the engine lock is let go,
        so the data path cannot use it first; a few 100 us (WAL, no fsync) per message."""
        wall = time.time()
        taken = None
        with self.saver.wlock:
            with self.elock:
                for peer, message in messages:
                    self.engine.on_message(peer, message, wall)
                if poll is not None:
                    self.engine.poll(poll)
                # events first: a relay acts on them (daemon/relay.py), which may add output
                events = self._take_events(wall)
                outgoing = self.engine.take_outgoing()
                released = self.engine.take_released()
                if self.engine.has_changes or self.engine.durable_seq != self.saver.written_seq:
                    taken = self.saver.take()
                    if messages:
                        self._write(taken)
                        taken = None
            for ev in events:
                self.events.add(ev)
            if taken is not None:
                self._write(taken, self.events)
        if events:
            try:
                self.events.flush()
            except Exception as e:
                self._write_failed(e)
        for peer, message in outgoing:
            self.channels.send(peer, message)
        if released:
            self.tun.write_batch([pkt for _, pkt in released])
            self.stats["released"] += len(released)
        for ev in events:
            if type(ev) is E.PaymentReceived and ev.contract_id not in self.verifying:
                self.verifying[ev.contract_id] = self.loop.create_task(self._verify(ev))
        self.channels.flush(time.monotonic())
        self.poke()             # a channel's retransmit or a session's timer may be due sooner

    def _pricer(self):
        """The seller's list prices: None, the static [pricing] table (a relay's differ)."""
        return None

    def _take_events(self, wall: float) -> list:
        """The engine's events, under its lock (a relay's resale sees them first)."""
        return self.engine.take_events()

    async def _verify(self, ev) -> None:
        cid = ev.contract_id
        peer = peer_text(ev.counterpart)
        account = ev.account or self.engine.pricing.account
        terms = Terms(cid, ev.cost_msat, peer=peer, account=account)
        try:
            try:
                verdict = await self.payee.verify(ev.proof, terms)
            except Exception as e:  # a backend failure must not take the daemon down
                log.warning("verifying payment for %s failed: %s", cid, e)
                verdict = Verdict("invalid", f"verification failed: {e}")
            verdict = await self._poll_until_final(cid, verdict)
            await self._finish(cid, peer, verdict, cost=ev.cost_msat)
        finally:
            self.verifying.pop(cid, None)

    def status(self) -> dict:
        peers = []
        for peer in self.responder.peers():
            ep = self.responder.endpoint(peer)
            link = self.links.get(peer)
            addr = link.address if link else None
            addr6 = link.address6 if link else None
            peers.append({
                "public_key": base64.b64encode(peer).decode(),
                "address": str(ipaddress.IPv4Address(addr)) if addr else None,
                "address6": str(ipaddress.IPv6Address(addr6)) if addr6 else None,
                "chunks": bool(link and link.chunks),    # gets TSO bursts as chunk records
                "endpoint": f"{ep[0]}:{ep[1]}" if ep else None,
            })
        return {
            "listen": f"{self.cfg.listen[0]}:{self.cfg.listen[1]}",
            "address": str(self.cfg.address),
            "address6": str(self.cfg.address6) if self.cfg.address6 else None,
            "upstream_interface": self.cfg.upstream_interface,
            "peers": peers,
            "leases": self.leases.status(),     # address pool: size, used, reclaimed
            "session_stats": dict(self.responder.stats),
            "flood": self.handshakes.status(),      # handshakes dropped by reason
            "tun_stats": dict(self.tun.stats),
            "payment": {"backend": self.cfg.payment.backend,
                        "real_money": getattr(self.payee, "real_money", True),
                        "notice": getattr(self.payee, "notice", ""),
                        "credit_msat": self.payee.journal.credit_balances(),   # by peer key
                        "verifying": len(self.verifying),
                        "accounts_ready": len(self.accounts.ready) if self.accounts else None,
                        # why no fresh account (invoice / address) can be made now, in one line
                        "account_error": self.accounts.last_error if self.accounts else ""},
            "market": self._market_status(),
            "pricing": self._pricing(),
            "control_stats": dict(self.channels.stats),
            "advert": self.adverts.status(),
        }

    def _market_status(self) -> dict:
        wall = time.time()
        with self.elock:        # only the copy: the data path meters under this lock
            snapshot = self.engine.status_snapshot()
        st = self.engine.status(wall, snapshot)
        # the engine keys peers by raw key; people and the other commands use base64
        st["peers"] = {peer_text(bytes.fromhex(k)): v for k, v in st["peers"].items()}
        for c in st["contracts"]:
            if isinstance(c.get("peer"), str) and len(c["peer"]) == 64:
                c["peer"] = peer_text(bytes.fromhex(c["peer"]))
        return st
