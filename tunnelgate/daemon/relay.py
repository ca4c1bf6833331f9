"""`tunnelgate serve` with an [upstream] table: a relay, a gateway whose uplink is a client.

One process, one asyncio loop, one node key: the gateway side (``RelayDaemon``, the
GatewayDaemon: its TUN, sessions, Seller) and the client side (``Uplink``, a ClientDaemon
never run on its own: its links, Buyer, payments as payer, its own TUN and data threads).
The kernel carries packets between the two TUNs: the gateway's nft masquerade goes out of
the upstream TUN (config: upstream_interface is [upstream.network] tun), so what a
downstream client sends to D leaves source-translated to the relay's upstream tunnel
address, and the client side's routes send D into that TUN. Each side meters its own TUN
(the Seller downstream, the Buyer upstream).

The two engines share one lock (the seller's pricer reads the buyer's books from the data
path: protocol/relay_pricer.py, resale.py), and their events go through ``ResaleGlue``
before either side handles them. The client side keeps its own database and network record
under state_dir/upstream. Why one process: the seller must ask the buyer synchronously (a
first packet's price is the upstream one), and both must stop together.
"""

from __future__ import annotations

import json
import logging
import time

from ..protocol import events as E
from ..protocol.relay_pricer import RelayPricer
from ..protocol.resale import Resale, ResalePolicy
from ..net import setup as netsetup
from . import datapath_client
from .client import ClientDaemon
from .gateway import GatewayDaemon
from .market import peer_text
from .store import Store

log = logging.getLogger("tunnelgate.relay")

LEDGER = "resale_ledger"        # the store's snapshot of the money per destination
ROUNDS = 8                      # event rounds per step: each is what the last one's callbacks made


class ResaleGlue:
    """The relay's two engines' events, seen by ``Resale`` before the daemon's two sides take
    them (each side then logs and acts on its own as any gateway or client). Called under
    the engines' lock."""

    def __init__(self, seller, buyer, resale: Resale):
        self.seller, self.buyer, self.resale = seller, buyer, resale
        self.seller_kept: list = []     # seen by resale, for the gateway side
        self.buyer_kept: list = []      # ... for the client side
        self.seller_touched = False     # resale acted on the seller after its side took output

    def _drain(self, now: float) -> bool:
        acted = False
        for _ in range(ROUNDS):
            se, be = self.seller.take_events(), self.buyer.take_events()
            if not se and not be:
                break
            self.resale.on_events(se, be, now)
            self.seller_kept += se
            self.buyer_kept += be
            acted = True
        return acted

    def step(self, now: float) -> bool:
        """Events to resale, then its poll (buys ahead, times out), then what that made."""
        acted = self._drain(now)
        self.resale.poll(now)
        acted = self._drain(now) or acted
        # the resale's own events (a buy upstream, a destination lost) go in the relay's log
        self.seller_kept += self.resale.take_events()
        return acted

    def seller_events(self, now: float) -> list:
        self.step(now)
        out, self.seller_kept = self.seller_kept, []
        self.seller_touched = False
        return out

    def buyer_events(self, now: float) -> list:
        if self.step(now):
            self.seller_touched = True      # e.g. upstream_ready: a PROPOSE to send downstream
        out, self.buyer_kept = self.buyer_kept, []
        return out


class Uplink(ClientDaemon):
    """The relay's client side: set up and ticked by the relay, on its loop, never run alone."""

    def __init__(self, relay: "RelayDaemon", cfg, private_key: bytes, verbose: bool = False):
        super().__init__(cfg, private_key, verbose)
        self.relay = relay
        self.elock = relay.elock        # one lock for both engines (see the module's text)

    def _take_events(self, wall: float) -> list:
        return self.relay.glue.buyer_events(wall)

    def _pump(self) -> None:
        self.relay._pump()

    def poke(self) -> None:
        self.relay.poke()


class RelayDaemon(GatewayDaemon):
    def __init__(self, cfg, private_key: bytes, verbose: bool = False):
        super().__init__(cfg, private_key, verbose)
        self.up = Uplink(self, cfg.upstream, private_key, verbose)
        self.resale: Resale | None = None
        self.glue: ResaleGlue | None = None
        self.gone: set[bytes] = set()       # upstream gateways found silent (upstream_gone said)
        self._ledger_saved = ""

    # --- set-up ------------------------------------------------------------------------

    async def setup(self) -> None:
        up = self.up
        up.loop, up._stop, up._woken = self.loop, self._stop, self._woken
        d = up.cfg.node.state_dir
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        await self.net(netsetup.teardown, up.paths["net"])     # what a dead instance left
        up.store = Store(up.paths["db"])
        await up.setup()                    # the Buyer, the upstream TUN, the first handshakes
        self.resale = Resale(up.engine, self.gateway_for, ResalePolicy())
        await super().setup()               # the Seller, pricing through _pricer()
        with self.elock:
            self.resale.attach(self.engine)
            self.glue = ResaleGlue(self.engine, up.engine, self.resale)
        saved = self.store.load_snapshot(LEDGER)
        if saved:
            self.resale.ledger.restore(json.loads(saved))
            self._ledger_saved = saved
        log.info("relay: selling with margin %s over the upstream price, through %s", self.cfg.margin, up.cfg.tun)

    def _pricer(self):
        p = self.cfg.pricing
        return RelayPricer(self.resale, self.cfg.margin, floor=p.floor_price, fee=self.cfg.fee)

    def gateway_for(self, key: bytes) -> bytes | None:
        """Resale: the upstream gateway that carries destination key now (the client side's
        router, as its market chose), None when none is connected."""
        link = self.up.links.router.lookup(key)
        if link is None or not link.session.established or link.peer in self.gone:
            return None
        return link.peer

    def workers(self):
        up = self.up.plane
        return super().workers() + [
            ("up-udp-to-tun", lambda plane: up.run(datapath_client.udp_to_tun)),
            ("up-tun-to-udp", lambda plane: up.run(datapath_client.tun_to_udp))]

    async def _timers(self) -> None:
        try:
            await super()._timers()
        finally:
            # the client side's threads stop with the relay's (base._main joins them all)
            self.up.running = False
            if self.up.plane is not None:
                self.up.plane.running = False

    async def stopping(self) -> None:
        await super().stopping()
        await self.up.stopping()

    def shutdown(self) -> None:
        try:
            self._save_ledger()
        except Exception as e:
            log.error("cannot save the resale ledger to %s: %s", self.paths["db"], e)
        super().shutdown()
        up = self.up
        if up.plane is not None:
            up.plane.close()
        up.shutdown()
        if up.store is not None:
            up.store.close()
        try:
            netsetup.teardown(up.paths["net"])
        except Exception as e:
            log.error("could not undo the upstream side's network set-up: %s; run `tunnelgate down` "
                      "with this config to retry", e)

    # --- the control loop ----------------------------------------------------------------

    def _pump(self, messages: list = (), poll: float | None = None) -> None:
        """Both sides' engine output, resale first (ResaleGlue): the gateway side, the client
        side, and the gateway side again if resale acted on the seller meanwhile (an upstream
        ACCEPT makes the downstream PROPOSE). Credit for bytes a stop did not forward goes
        to the journal."""
        super()._pump(messages, poll)
        ClientDaemon._pump(self.up)
        if self.glue is not None and self.glue.seller_touched:
            super()._pump()

    def _take_events(self, wall: float) -> list:
        events = self.glue.seller_events(wall) if self.glue is not None else self.engine.take_events()
        for ev in events:
            if type(ev) is E.Refunded and ev.amount_msat:
                self.loop.call_soon(self._refund, ev)
        return events

    def _refund(self, ev) -> None:
        try:
            self.payee.journal.add_credit(peer_text(ev.counterpart), ev.amount_msat, f"refund:{ev.contract_id}",
                                          ev.contract_id or "", "bytes not forwarded: the upstream ended")
        except Exception as e:
            log.error("cannot credit %d msat to %s for %s: %s", ev.amount_msat, peer_text(ev.counterpart),
                      ev.contract_id, e)

    def tick(self, now: float) -> None:
        self._watch_upstream(now)
        super().tick(now)
        self.up.tick(now)
        try:
            self._save_ledger()
        except Exception as e:
            self._write_failed(e)

    def _watch_upstream(self, now: float) -> None:
        """An upstream gateway silent past its session's dead_after_s (killed, unplugged) is
        gone: what was resold through it stops now, not when its contracts would expire."""
        for link in self.up.links:
            s = link.session
            since = s.unanswered_since
            silent = since is not None and now - since >= s.timing.dead_after_s
            if silent and link.peer not in self.gone:
                self.gone.add(link.peer)
                reason = f"no answer for {now - since:.1f} s"
                log.warning("upstream gateway %s gone: %s", peer_text(link.peer), reason)
                with self.elock:
                    self.resale.upstream_gone(link.peer, reason, time.time())
                self._pump()
            elif not silent and s.established and link.peer in self.gone:
                self.gone.discard(link.peer)
                log.info("upstream gateway %s answers again", peer_text(link.peer))

    def next_deadline(self) -> float | None:
        times = [super().next_deadline(), self.up.next_deadline()]
        with self.elock:
            walls = [self.engine.next_deadline(), self.up.engine.next_deadline(), self.resale.next_deadline()]
        offset = time.monotonic() - time.time()         # the engines run on wall time
        times += [w + offset for w in walls if w is not None]
        return min((t for t in times if t is not None), default=None)

    def _save_ledger(self) -> None:
        if self.resale is None:
            return
        with self.elock:
            data = json.dumps(self.resale.ledger.snapshot(), sort_keys=True)
        if data != self._ledger_saved:
            self.store.save_snapshot(LEDGER, data)
            self._ledger_saved = data

    # --- events ---------------------------------------------------------------------------

    def event_sources(self):
        """Both sides' events (base.cmd_events): "downstream" what the relay sells, "upstream"
        what it buys and its own market's moves."""
        return [("downstream", self.events), ("upstream", self.up.events)]

    # --- status ---------------------------------------------------------------------------

    def status(self) -> dict:
        st = super().status()
        wall = time.time()
        with self.elock:
            resale = self.resale.status(wall)
        st["relay"] = {"margin": self.cfg.margin, "fee": self.cfg.fee, "upstream_tun": self.up.cfg.tun,
                       "gone": [peer_text(k) for k in self.gone], **resale}
        st["upstream"] = self.up.status()
        return st
