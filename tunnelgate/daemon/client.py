"""`tunnelgate up`: a TUN device whose traffic goes to the gateways it buys from.

One SellerLink per known gateway (daemon/gateways.py chooses which carries each
destination); the TUN carries the tunnel address the first gateway gave.

Over 600 lines: the glue of one role (set-up, handshakes' results, control requests,
payments, status); the logic is in gateways.py, protocol/buyer*.py and payments/."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import os
import time

import threading

from .. import offload, session as sess
from ..net import setup as netsetup
from ..money import format_price, parse_msat, parse_price
from ..payments import PaymentError, Terms, load_backend
from ..protocol import buyer as clp
from ..protocol import events as E
from ..protocol import messages as msgs
from ..protocol.channel import ACK as _ACK
from ..tun import Tun
from . import datapath_client
from ..offload.chunks import FEATURE_CHUNKS
from ..wire import FEATURE_SIZED
from .base import Daemon, features, udp_socket
from .control import ControlError
from .dataplane import DataPlane
from .discovery import Browser
from .gateways import Market
from .initiators import Initiators
from .links import Links, SellerLink
from .market import Channels, EventLog, Saver
from .srcnat import SourceNat

# what the one gateway sells: every destination the client routes into its TUN
EVERYWHERE = ("0.0.0.0/0", "::/0")
BALANCE_EVERY_S = 5.0
ACK_FRAME = bytes([_ACK])
QUOTE_TIMEOUT_S = 5.0

log = logging.getLogger("tunnelgate.client")



class ClientDaemon(Daemon):
    role = "client"

    def __init__(self, cfg, private_key: bytes, verbose: bool = False):
        super().__init__(cfg, private_key, verbose)
        # what our data path takes beyond the plain format, said in every handshake
        self.features = [FEATURE_CHUNKS] if offload.chunks_enabled() else []
        self.channels = Channels(self._send_control)
        # one link per gateway (built as they become known: _new_link); the primary is the
        # one whose handshake gave the TUN its address
        self.links = Links()
        self.primary: SellerLink | None = None
        self.market: Market | None = None
        self.routed_endpoint: str | None = None
        self.kill_switch_endpoint: tuple[str, int] | None = None
        self.last_handshake: float | None = None
        self._net_task: asyncio.Task | None = None    # the latest route change (one at a time)
        self.payer = None
        self.paying: dict[str, asyncio.Task] = {}
        self.wake_pending = False
        self.balance_msat: int | None = None
        self.balance_at: float | None = None
        self._balance_task: asyncio.Task | None = None
        self.low_balance = False          # below [payment] low_balance_msat (warned once)
        self.browser: Browser | None = None
        self.srcnat: SourceNat | None = None

    async def setup(self) -> None:
        cfg = self.cfg
        self._setup_market()
        # before the TUN and the first datagram: from here on nothing the tunnel will
        # carry leaves in plain, even if this process dies
        await self._kill_switch()
        self.tun = Tun(cfg.tun, cfg.mtu)
        v6 = any(":" in g.endpoint[0] for g in cfg.gateways)
        self.sock = udp_socket(("::", 0) if v6 else ("0.0.0.0", 0))
        loop = self.loop
        # one configured gateway and no discovery: its Initiator opens every datagram, as
        # before there were several (the hot path unchanged); else each goes to its own
        single = len(cfg.gateways) == 1 and not cfg.discovery.mdns
        self.market.choosing = not single
        receiver = next(iter(self.links)).session if single else Initiators(self.links)
        self.plane = DataPlane(
            sock=self.sock, tun=self.tun, receiver=receiver, links=self.links,
            engine=self.engine, elock=self.elock, saver=self.saver, stats=self.stats,
            warmth=self.warmth, session_lock=self.lock,
            on_control=lambda frames: loop.call_soon_threadsafe(self._control_in, frames),
            on_output=self._output_ready,
            on_session=lambda link, payload: loop.call_soon_threadsafe(
                self._spawn, self._handshake_done(link, payload)),
            on_moved=lambda link: loop.call_soon_threadsafe(self._spawn, self._gateway_moved(link)))
        for link in self.links:
            self._begin(link)
        if cfg.discovery.mdns:
            self.browser = Browser(list(cfg.discovery.interfaces), self._advert_seen)
            await self.browser.start()

    def _new_link(self, gw) -> SellerLink:
        """Market.add: a gateway's session and link, in the data plane without routes; its
        handshake begins at once if the socket is up (else in setup)."""
        session = sess.Initiator(self.private_key, gw.key, self.cfg.session.timing,
                                 cipher=self.cfg.session.cipher, lock=threading.Lock())
        link = SellerLink(gw.key, session, gw.endpoint, self.channels.get(gw.key))
        self.links.add(link)
        if self.sock is not None and self.plane is not None:
            self._begin(link)
        return link

    def _begin(self, link, waited: bool = False) -> None:
        if (not waited and self.kill_switch_endpoint is not None
                and tuple(link.endpoint[:2]) not in self.kill_switch_endpoint):
            # a gateway found after start: let its endpoint through the kill switch first
            async def after_kill_switch():
                await self._kill_switch()
                self._begin(link, waited=True)
            self._spawn(after_kill_switch())
            return
        with self.lock:
            first = link.session.begin(time.monotonic(), time.time_ns(), os.urandom(sess.RAND_BYTES),
                                       json.dumps({"features": self.features}).encode())
        self._send(first, link.endpoint)
        log.info("connecting to gateway %s:%d", *link.endpoint[:2])

    def _advert_seen(self, raw: bytes, source: str) -> None:
        self.market.on_advert(raw, source, time.monotonic(), time.time())

    @property
    def link(self) -> SellerLink | None:
        """The primary gateway's link (its address is the TUN's), or the first known."""
        return self.primary if self.primary is not None else next(iter(self.links), None)

    def _setup_market(self) -> None:
        cfg = self.cfg
        self.payer = load_backend(cfg.payment.backend, cfg.payment.settings_dict(), role="payer")
        # a snapshot from before books had counterparts was the first configured gateway's
        self.engine = clp.Buyer(cfg.policy, legacy_counterpart=cfg.gateway_public_key or b"",
                                own_key=sess.public_key(self.private_key))
        self.engine.prepay_msat = cfg.payment.prepay_msat
        self.events = EventLog(self.store)
        self.saver = Saver(self.store, self.engine, self.elock)
        if self.saver.restore(time.time()):
            log.info("resumed %d contracts from %s", len(self.engine.contracts()), self.paths["db"])
        self.market = Market(cfg.choice, cfg.discovery, self.links, self.engine, self.elock, self.store,
                             self._new_link, self._quote, self._market_event, cfg.policy.max_price,
                             fetch_advert=self._fetch_advert)
        self.market.translate = True            # the source translation below
        self.srcnat = SourceNat(self.links, self.market, self.cfg.tun, self._net_source_nat, self._spawn)
        for c in self.engine.contract_list():   # destinations bought before a restart
            if c.destination not in EVERYWHERE:
                self.market.destinations.add(c.destination)
        now = time.monotonic()
        for spec in cfg.gateways:               # their links; handshakes begin once the socket is up
            self.market.add(spec, now)
        if not getattr(self.payer, "real_money", True):
            log.warning("payment backend %r: %s", cfg.payment.backend,
                        getattr(self.payer, "notice", "no real payment happens"))

    def handlers(self) -> dict:
        return {**super().handlers(),
                "set": self.cmd_set, "quote": self.cmd_quote, "gateways": self.cmd_gateways}

    def cmd_set(self, req: dict) -> dict:
        """Live settings, not written back to the config: pause_buying, max_price (msat/KB as a
        decimal string), max_spend_per_hour/day/total (msat; null lifts the limit)."""
        changes, paused = {}, None
        for key, value in req.items():
            if key == "cmd":
                continue
            try:
                if key == "pause_buying":
                    if not isinstance(value, bool):
                        raise ValueError("expected true or false")
                    paused = value
                elif key == "max_price":
                    changes[key] = parse_price(value)
                elif key in ("max_spend_per_hour", "max_spend_per_day", "max_spend_total"):
                    changes[key] = None if value is None else parse_msat(value)
                else:
                    raise ControlError("bad_setting", f"unknown setting {key!r}; settable: pause_buying, "
                                       "max_price, max_spend_per_hour, max_spend_per_day, max_spend_total")
            except ValueError as e:
                raise ControlError("bad_value", f"{key}: {e}") from None
        with self.elock:
            if changes:
                self.engine.set_policy(**changes)
            if paused is not None:
                self.engine.paused = paused
        for key, value in req.items():
            if key != "cmd":
                self.events.say("setting", f"{key} = {value}")
        return self._settings()

    def _settings(self) -> dict:
        p = self.engine.policy
        return {"pause_buying": self.engine.paused, "max_price": format_price(p.max_price),
                "max_price_units": p.max_price, "max_spend_per_hour": p.max_spend_per_hour,
                "max_spend_per_day": p.max_spend_per_day, "max_spend_total": p.max_spend_total}

    def workers(self):
        return [("udp-to-tun", datapath_client.udp_to_tun),
                ("tun-to-udp", datapath_client.tun_to_udp)]

    def shutdown(self) -> None:
        if self.saver is not None:
            self.saver.maybe_save(time.time(), force=True)
            self.events.flush()
        if self.market is not None:
            self.market.save()
        for obj in (self.sock, self.tun):
            if obj is not None:
                obj.close()

    async def stopping(self) -> None:
        if self.browser is not None:
            await self.browser.close()

    def _send(self, datagram: bytes, endpoint) -> None:
        try:
            self.sock.sendto(datagram, endpoint)
        except OSError as e:
            self.stats["send_errors"] += 1
            log.debug("send to %s failed: %s", endpoint, e)

    # --- control plane (asyncio thread) -------------------------------------------------

    def _spawn(self, coro) -> None:
        # one at a time: route changes must not interleave
        prev = self._net_task

        async def chained():
            if prev is not None:
                await asyncio.gather(prev, return_exceptions=True)
            try:
                await coro
            except Exception:
                log.exception("configuring the tunnel failed")
                self.stats["net_errors"] += 1

        self._net_task = self.loop.create_task(chained())

    async def _handshake_done(self, link, payload: bytes) -> None:
        if link is None:
            return
        self.last_handshake = time.time()
        self.stats["handshakes"] += 1
        try:
            info = json.loads(payload)
            address = str(ipaddress.IPv4Interface(info["address"]))
            # a dual-stack gateway gives an IPv6 address as well
            address6 = str(ipaddress.IPv6Interface(info["address6"])) if info.get("address6") else None
        except (ValueError, KeyError, TypeError, AttributeError):
            log.error("gateway sent an unusable handshake payload %r; is it a tunnelgate gateway "
                      "of this version?", payload[:100])
            self.stats["bad_handshake_payload"] += 1
            return
        offered = features(payload)
        usable = self.market.on_handshake(link.peer, info, address, time.monotonic())
        if self.primary is None and usable:
            self.primary = link
        if link is not self.primary:
            # another gateway: the TUN has the primary's address (Market checks it is the same)
            link.features = offered & {FEATURE_CHUNKS, FEATURE_SIZED}
            self.links.set_chunks(link, FEATURE_CHUNKS in self.features and FEATURE_CHUNKS in offered)
            link.address, link.address6 = address, address6
            with self.elock:
                self.engine.book(link.peer).sized_requests = FEATURE_SIZED in offered
            self._after_handshake(link, info)
            await self._route_endpoint()
            return
        link.features = offered & {FEATURE_CHUNKS, FEATURE_SIZED}
        self.links.set_chunks(link, FEATURE_CHUNKS in self.features and FEATURE_CHUNKS in offered)
        with self.elock:
            self.engine.book(link.peer).sized_requests = FEATURE_SIZED in offered
        if (address, address6) != (link.address, link.address6):
            if link.address is not None:
                log.warning("gateway changed our address %s -> %s", link.address, address)
                await self.net(netsetup.teardown, self.paths["net"])
                self.routed_endpoint = None
                self.kill_switch_endpoint = None
                await self._kill_switch()
            await self.net(netsetup.setup_client_tun, self.paths["net"], self.cfg.tun, address, self.cfg.mtu,
                           address6)
            link.address, link.address6 = address, address6
            log.info("tunnel up: %s%s on %s", address, f" {address6}" if address6 else "", self.cfg.tun)
        self._after_handshake(link, info)
        await self._route_endpoint()
        if self.ready:
            self._resend_payments()
        self.ready = True

    def _after_handshake(self, link, info: dict) -> None:
        """Until prices are known the default routes go to the first gateway up; the full
        advert is asked for (config-listed gateways announce none, mDNS ones a reduced one)."""
        router = self.links.router
        for dest in EVERYWHERE:
            if router.lookup(bytes(4 if ":" not in dest else 16)) is None:
                router.add(dest, link)
        if info.get("sign_key"):
            self._fetch_advert(link.peer)
            self.market.asked_advert(link.peer, time.monotonic())
        self._pump()

    async def _net_source_nat(self, own: list[str], routes: list[tuple[str, str]]) -> None:
        await self.net(netsetup.setup_source_nat, self.paths["net"], self.cfg.tun, own, routes)

    def _fetch_advert(self, peer: bytes) -> None:
        """Market: the gateway's whole advert, over its authenticated control channel."""
        self.channels.send(peer, msgs.AdvertRequest())

    def _resend_payments(self) -> None:
        """A new session (the gateway restarted?): send the stored proof of every contract not
        yet confirmed paid again. The gateway answers from its journal (the same proof is one
        payment), so a payment it took just before a crash is honoured, never taken twice."""
        with self.elock:
            for gw, cid in self.engine.unpaid():
                known = self.store.client_payment(cid)
                if known and cid not in self.paying:
                    method, proof, amount, _ = known
                    try:
                        self.engine.paid(gw, cid, method, proof, amount)
                    except KeyError:
                        pass
        self._pump()

    async def _gateway_moved(self, link) -> None:
        log.info("gateway now at %s:%d", *link.endpoint[:2])
        await self._kill_switch()
        if self.primary is not None and self.primary.address is not None:
            await self._route_endpoint()

    def _endpoints(self) -> tuple:
        return tuple(sorted({(link.endpoint[0], link.endpoint[1]) for link in self.links}))

    async def _kill_switch(self) -> None:
        """(Re)apply the kill switch for the gateways' endpoints; off in the config: nothing."""
        endpoints = self._endpoints()
        if self.cfg.kill_switch and self.kill_switch_endpoint != endpoints:
            await self.net(netsetup.setup_kill_switch, self.paths["net"], self.cfg.tun,
                           list(self.cfg.routes), list(endpoints))
            self.kill_switch_endpoint = endpoints

    async def _route_endpoint(self) -> None:
        """The TUN's routes, with a host route to every gateway's endpoint around them."""
        await self._kill_switch()
        hosts = tuple(sorted({ep[0] for ep in self._endpoints()}))
        if self.routed_endpoint != hosts and self.primary is not None and self.primary.address is not None:
            await self.net(netsetup.setup_client_routes, self.paths["net"], self.cfg.tun,
                           list(self.cfg.routes), list(hosts))
            self.routed_endpoint = hosts

    def next_deadline(self) -> float | None:
        times = [link.session.next_deadline() for link in self.links]
        times += [self.channels.next_deadline(), self.market.next_deadline(),
                  self.engine_deadline(time.monotonic())]
        return min((t for t in times if t is not None), default=None)

    def tick(self, now: float) -> None:
        for link in self.links:
            with self.lock:
                out = link.session.poll(now, time.time_ns(), os.urandom(sess.RAND_BYTES))
            for datagram in out:
                self._send(datagram, link.endpoint)
        wall = time.time()
        self.market.tick(now, wall)
        self.srcnat.tick(now, self.primary)
        with self.elock:
            self.engine.poll(wall)
        self._pump()
        self.saver.maybe_save(wall)
        self.events.flush()
        if (self.balance_at is None or wall - self.balance_at >= BALANCE_EVERY_S) and (
                self._balance_task is None or self._balance_task.done()):
            self._balance_task = self.loop.create_task(self._check_balance())

    def _recheck_balance(self) -> None:
        """Check the wallet at the next tick (after a payment, or one that failed)."""
        self.balance_at = None

    async def _check_balance(self) -> None:
        self.balance_at = time.time()
        try:
            balance = await self.payer.balance_msat()
        except Exception as e:  # the wallet may be unreachable: say so in status, keep running
            log.debug("wallet balance unavailable: %s", e)
            return
        self.balance_msat = balance
        now = time.time()
        with self.elock:
            if not self.paying:      # a payment under way: its own estimate stands until it ends
                self.engine.set_funds(balance, now)
        low = self.cfg.payment.low_balance_msat
        if low and balance < low and not self.low_balance:
            self.low_balance = True
            self.events.say("low_balance", f"wallet balance {balance} msat is below low_balance_msat = "
                            f"{low}; fund the wallet", amount_msat=balance, data={"threshold_msat": low})
        elif low and balance >= low and self.low_balance:
            self.low_balance = False
        self._pump()

    # --- contracts: control messages, payments ------------------------------------------

    def _send_control(self, peer: bytes, frame: bytes) -> None:
        link = self.links.get(peer)
        if link is None:
            return
        # an ACK frame asks for no answer: it must not start the silence that fails a gateway over
        datagram = link.session.seal(sess.CONTROL, frame, time.monotonic(), answered=frame[:1] != ACK_FRAME)
        if datagram is not None:
            self._send(datagram, link.endpoint)

    def _control_in(self, frames: list[tuple[bytes, bytes]]) -> None:
        """plane.on_control, on this thread: (gateway key, frame) per control frame received."""
        now, wall = time.monotonic(), time.time()
        for peer, frame in frames:
            for message in self.channels.receive(peer, frame, now):
                if type(message) is msgs.AdvertMessage:      # the market's, not the engine's
                    self.market.on_advert_message(peer, message.advert, wall)
                    continue
                with self.elock:
                    self.engine.on_message(peer, message, wall)
        self._pump()

    def _quote(self, peer: bytes, dest: str) -> None:
        """Market: a QUOTE_REQUEST to a gateway (a probe, or a user's `quote`)."""
        with self.elock:
            self.engine.request_quote(peer, dest)

    def _market_event(self, ev) -> None:
        self.events.add(ev)

    def _output_ready(self) -> None:
        """plane.on_output, from a data thread: a renewal request is waiting; send it now,
        not when the control thread next wakes, with at most one wake-up in flight."""
        if not self.wake_pending:
            self.wake_pending = True
            self.loop.call_soon_threadsafe(self.wake)

    def wake(self) -> None:
        self.wake_pending = False
        self._pump()

    def _pump(self) -> None:
        """The engine's output: a money change (a contract accepted, paid, ended, revoked) is
        saved with its events first (write-through, the whole snapshot: a handful of contracts),
        then the messages that make it count (ACCEPT commits us to pay) go out."""
        taken = None
        with self.saver.wlock:
            with self.elock:
                # events first: a relay acts on them (daemon/relay.py), which may add output
                events = self._take_events(time.time())
                outgoing = self.engine.take_outgoing()
                if self.engine.durable_seq != self.saver.written_seq:
                    taken = self.saver.take()
            for ev in events:
                if type(ev) is not E.Quote:     # the market's probes ask many; `quote` answers its own
                    self.events.add(ev)
            if taken is not None:
                try:
                    self.saver.write(taken, self.events)
                except Exception as e:
                    log.error("cannot save the contracts to %s: %s; check the disk", self.paths["db"], e)
        for peer, message in outgoing:
            self.channels.send(peer, message)
        wall = time.time()
        for ev in events:
            self.market.on_event(ev, wall)
            if type(ev) is E.PaymentDue and ev.contract_id not in self.paying:
                self.paying[ev.contract_id] = self.loop.create_task(self._pay(ev))
            elif type(ev) is E.Paid:
                self.store.set_client_payment_state(ev.contract_id, "confirmed")
            elif type(ev) is E.Quote:
                self.market.on_quote(ev, time.monotonic(), wall)
        self.channels.flush(time.monotonic())
        self.poke()             # a channel's retransmit or the session's keepalive may be due sooner

    def _take_events(self, wall: float) -> list:
        """The engine's events, under its lock (a relay's resale sees them first)."""
        return self.engine.take_events()

    async def cmd_quote(self, req: dict) -> dict:
        """The gateway's current terms for a destination, without buying anything."""
        dest = req.get("destination")
        try:
            net = ipaddress.ip_network(dest if "/" in str(dest) else f"{dest}/{32 if ':' not in str(dest) else 128}")
        except (ValueError, TypeError):
            raise ControlError("bad_value", f"destination: expected an IP address or prefix, got {dest!r}") from None
        gw = self._gateway_for(req.get("gateway"), str(net))
        if gw is None or not gw.link.session.established:
            raise ControlError("not_connected", "no session with the gateway yet; wait for the handshake")
        fut = self.loop.create_future()
        self.market.ask_quote(gw.key, str(net), fut=fut)
        self._pump()
        try:
            ev = await asyncio.wait_for(fut, QUOTE_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise ControlError("timeout", f"the gateway did not quote within {QUOTE_TIMEOUT_S:g} s") from None
        # per payment method: the amount paid, the expected fee and the time to settle
        per_method = getattr(self.payer, "quote", None)
        payment = (per_method(ev.amount_msat) if per_method else
                   [{"method": self.cfg.payment.backend, "amount_msat": ev.amount_msat,
                     "fee_msat": self.payer.fee_msat(ev.amount_msat)}])
        return {"destination": ev.destination, "price": ev.price, "price_text": format_price(ev.price),
                "limit_kb": ev.limit_kb, "time_s": ev.time_s, "cost_msat": ev.amount_msat,
                "methods": list(ev.methods), "grace_s": ev.grace_s, "grace_kb": ev.grace_kb,
                "max_price": format_price(ev.max_price), "acceptable": ev.acceptable,
                "reason": ev.reason, "payment": payment,
                "chain": [{"public_key": k, "price_per_kb": p} for k, p in ev.chain],
                "chain_problem": ev.chain_problem}

    async def _pay(self, ev) -> None:
        cid = ev.contract_id
        try:
            method = self.cfg.payment.backend
            if method not in ev.methods:
                raise PaymentError(f"the gateway accepts {', '.join(ev.methods) or 'nothing'}, "
                                   f"this client pays with {method}; change [payment] backend")
            known = self.store.client_payment(cid)
            if known:  # paid before a restart: send the same proof again, never pay twice
                method, proof, amount, _ = known
            else:
                # at least the cost; with [payment] prepay_msat more, kept as credit at the gateway
                amount = max(ev.amount_msat, ev.pay_msat)
                try:
                    proof = await self.payer.pay(Terms(cid, amount, account=ev.account))
                except PaymentError:
                    if amount == ev.amount_msat:
                        raise
                    amount = ev.amount_msat      # could not prepay: pay this contract only
                    proof = await self.payer.pay(Terms(cid, amount, account=ev.account))
                self.store.record_client_payment(cid, method, proof, amount)
            with self.elock:
                self.engine.paid(ev.counterpart, cid, method, proof, amount)
            self._pump()
        except (PaymentError, KeyError) as e:
            self.events.say("payment_failed", str(e), contract_id=cid, destination=ev.destination,
                            amount_msat=ev.amount_msat)
            if "insufficient funds" in str(e).lower():
                try:
                    funds = await self.payer.balance_msat()
                except Exception:
                    funds = self.balance_msat
                with self.elock:
                    self.engine.payment_impossible(ev.counterpart, cid, str(e), funds)
                self._pump()
        finally:
            self.paying.pop(cid, None)
            self._recheck_balance()

    def _gateway_for(self, key_text: str | None, dest: str):
        """The gateway a `quote` asks: the one named, else the one the destination routes to."""
        if key_text:
            try:
                key = base64.b64decode(key_text, validate=True)
            except ValueError:
                raise ControlError("bad_value", f"gateway: a base64 public key, got {key_text!r}") from None
            gw = self.market.gateways.get(key)
            if gw is None:
                raise ControlError("unknown_gateway", "no such gateway; see `tunnelgate gateways`")
            return gw
        addr = ipaddress.ip_network(dest).network_address.packed
        link = self.links.router.lookup(addr) or self.link
        return self.market.gateways.get(link.peer) if link is not None else None

    def cmd_contracts(self, req: dict) -> list[dict]:
        """As both daemons', with the gateway (public key, label) that holds each."""
        with self.elock:
            cs = self.engine.contract_list(history=bool(req.get("all")))
        now, gws = time.time(), self.market.gateways
        return [{**c.view(now), "gateway": base64.b64encode(c.peer).decode(),
                 "gateway_label": gws[c.peer].label if c.peer in gws else ""} for c in cs]

    def cmd_gateways(self, req: dict) -> list[dict]:
        """Every known gateway: state, quality, price, destinations, money spent, record."""
        with self.elock:
            spent = {}
            for c in self.engine.contract_list(history=True):
                if c.paid:
                    spent[c.peer] = spent.get(c.peer, 0) + c.terms.cost_msat
        return self.market.view(time.monotonic(), spent)

    def status(self) -> dict:
        link = self.link
        return {
            "gateway": f"{link.endpoint[0]}:{link.endpoint[1]}" if link else None,
            "gateway_public_key": base64.b64encode(link.peer).decode() if link else None,
            "address": link.address if link else None,
            "address6": link.address6 if link else None,
            "gateway_features": sorted(link.features) if link else [],       # from its handshake
            "routes": list(self.cfg.routes),
            "kill_switch": self.kill_switch_endpoint is not None,
            "connected": bool(link and link.session.established),
            "last_handshake": self.last_handshake,
            "session_stats": dict(link.session.stats) if link else {},
            "gateways": len(self.links),
            "tun_stats": dict(self.tun.stats),
            "payment": {"backend": self.cfg.payment.backend,
                        "real_money": getattr(self.payer, "real_money", True),
                        "notice": getattr(self.payer, "notice", "")},
            "market": self._market_status(),
            "budgets": {k: v for k, v in self._settings().items() if k.startswith("max_spend")},
            "settings": self._settings(),
            "wallet": {"balance_msat": self.balance_msat, "checked_at": self.balance_at,
                       "low_balance": self.low_balance, "low_balance_msat": self.cfg.payment.low_balance_msat,
                       "no_funds": self.engine.no_funds_reason, "credit_msat": self.engine.credit_msat,
                       "prepay_msat": self.cfg.payment.prepay_msat}
            if self.balance_msat is not None else None,
            "credit_msat": self.engine.credit_msat,
            "control_stats": dict(self.channels.stats),
        }

    def _market_status(self) -> dict:
        now = time.time()
        with self.elock:
            # the data path meters under this lock: views are built after it
            snapshot = self.engine.status_snapshot(now)
            paused, max_price = self.engine.paused, self.engine.policy.max_price
        st = self.engine.status(now, snapshot)
        st.update(pause_buying=paused, max_price=max_price)
        return st
