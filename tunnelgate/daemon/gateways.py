"""The client's market of gateways: who is known, who is up, who carries which destination.

One `Gateway` per known gateway (configured, or found over mDNS and verified by its
handshake), each with its own SellerLink and Initiator session (the daemon builds
those: `ClientDaemon._new_link`). `Market` runs on the control thread, from the
daemon's tick and its event and message handlers:

- liveness (protocol/liveness.py) per gateway, fed from its session's
  `unanswered_since`, which the data path keeps anyway: nothing is added per packet;
  probes are QUOTE_REQUESTs, which the gateway answers at once (its channel acks too),
  so one probe measures the round trip and refreshes a price;
- the choice per destination (protocol/choice.py): the default routes ("0.0.0.0/0",
  "::/0") and every destination a contract was bought for, each routed to its
  gateway's link in the data plane's router (a host route per destination, the
  default routes for the rest), and the buyer's meter pointed at that gateway's flow
  (`Buyer.use_seller`), so a contract still live at a gateway that comes back is used
  again, never bought twice;
- each gateway's record (protocol/choice.Record), saved in the store across restarts:
  contracts bought, paid, delivered, usage disagreements, payments with no service
  after them, failed handshakes.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
from collections import deque
from dataclasses import dataclass, field

from ..config_market import GatewaySpec
from ..protocol import events as E
from ..protocol.advert import Advert, AdvertBook
from ..protocol.choice import Chooser, Offer, Record
from ..protocol.liveness import Liveness

log = logging.getLogger("tunnelgate.gateways")

DEFAULTS = ("0.0.0.0/0", "::/0")
HANDSHAKE_FAIL_S = 5.0        # a handshake not done this long after it began counts as failed
UNSERVED_S = 3.0              # paid, sending, and nothing back for this long: no service
UNSERVED_UP_BYTES = 1000      # ... with at least this much sent meanwhile
IDLE_PROBE_S = 2.0            # an idle gateway's probe (keepalive, RTT, loss, price)
MAX_DESTINATIONS = 1024       # destinations chosen for (beyond: they follow the default)
REQUOTE_S = 5.0               # a refusal's lifting QUOTE unanswered this long: asked again
# a gateway's whole advert (its priced prefixes) is fetched again when its quoted default
# price changes or the advert is this close to expiring, at most once per ADVERT_REFETCH_S
# (the gateway answers one ADVERT_REQUEST per 10 s per peer beyond its first three)
ADVERT_REFETCH_S = 10.0
ADVERT_RENEW_S = 60.0
# a first choice waits until every gateway up has a price, at most this long after start, so
# the hysteresis does not pin it to whichever answered first
SETTLE_S = 3.0


@dataclass
class Gateway:
    key: bytes
    endpoint: tuple[str, int]
    label: str = ""
    source: str = "config"            # "config" or "mdns"
    link: object = None               # links.SellerLink
    liveness: Liveness = field(default_factory=Liveness)
    up: bool = False                  # handshake done, answering
    address_ok: bool = True           # gave the tunnel address the TUN carries (else: translated)
    sign_key: bytes | None = None     # from its handshake
    advert: Advert | None = None      # its verified advert, if any
    quotes: dict = field(default_factory=dict)    # destination -> price, from QUOTEs
    # outstanding QUOTE_REQUESTs, answered in order: (probe id or None, destination, a
    # user's future or None)
    probes: deque = field(default_factory=deque)
    began: float | None = None        # the handshake in flight began (monotonic)
    probe_seq: int = 0
    next_quote: int = 0               # round robin over destinations
    advert_asked: float | None = None  # the latest ADVERT_REQUEST sent to it (monotonic)
    # destination -> (wall time until which it said no deal, its reason, when the QUOTE that
    # may lift it was asked or None): a relay whose upstream is gone, a gateway refusing; no
    # offer for that destination meanwhile, and after it only once a QUOTE says it would sell
    refusals: dict = field(default_factory=dict)

    def refuse(self, dest: str, until: float, reason: str) -> None:
        """It said no deal for dest until then (a NO_DEAL, a QUOTE with retry_after_s)."""
        if dest in self.refusals or len(self.refusals) < MAX_DESTINATIONS:
            self.refusals[dest] = (until, reason, None)

    def price(self, dest: str) -> int | None:
        if dest in self.quotes:
            return self.quotes[dest]
        if self.advert is not None:
            addr = dest.split("/")[0]
            return self.advert.price_for(addr)
        default = DEFAULTS[1] if ":" in dest else DEFAULTS[0]
        return self.quotes.get(default)

    @property
    def state(self) -> str:
        if self.link is None or (self.source == "mdns" and self.sign_key is None):
            return "unverified"
        return "up" if self.up and not self.liveness.dead else "down"


def key_text(key: bytes) -> str:
    return base64.b64encode(key).decode()


class Market:
    """The client's gateways and its choice per destination. The daemon gives it `links`
    (the data plane's), the buyer `engine` and its lock, the store, and callbacks:
    `new_link(gateway)` builds a gateway's link and begins its handshake; `quote(key,
    dest)` sends a QUOTE_REQUEST; `event(ev)` logs a typed event; `fetch_advert(key)`
    sends an ADVERT_REQUEST (None: adverts are not fetched again)."""

    def __init__(self, cfg_choice, cfg_discovery, links, engine, elock, store, new_link, quote, event,
                 max_price=None, fetch_advert=None) -> None:
        self.links, self.engine, self.elock, self.store = links, engine, elock, store
        self.new_link, self.quote, self.event, self.fetch_advert = new_link, quote, event, fetch_advert
        self.failover_s = cfg_choice.failover_s
        self.max_candidates = cfg_discovery.max_candidates
        self.chooser = Chooser(cfg_choice.switch_margin, max_price)
        self.book = AdvertBook(max_candidates=cfg_discovery.max_candidates)
        self.gateways: dict[bytes, Gateway] = {}
        self.records: dict[bytes, Record] = self._load_records()
        self.address: str | None = None           # the TUN's (the first gateway's) address
        # the daemon translates the source of what a gateway with another address carries
        # (net/nft.srcnat_ruleset); without it such a gateway carries nothing
        self.translate = False
        self.moves = 0                            # destinations moved since start
        self._paid: dict[str, tuple[bytes, float, int, int]] = {}   # cid -> (gw, at, up, down)
        self._judged: set[str] = set()
        self._dirty: set[bytes] = set()
        self.destinations: set[str] = set()       # chosen for (beyond the defaults)
        self.now = 0.0
        self.wall = 0.0
        self.started: float | None = None
        # one configured gateway and no discovery: nothing to choose between, so no probes
        # and no choice (the default routes go to it at its handshake), as before the market
        self.choosing = True

    # --- records --------------------------------------------------------------------

    def _load_records(self) -> dict[bytes, Record]:
        self.store.execute("CREATE TABLE IF NOT EXISTS gateway_records (key TEXT PRIMARY KEY, data TEXT)")
        out = {}
        for key, data in self.store.execute("SELECT key, data FROM gateway_records"):
            try:
                out[base64.b64decode(key)] = Record(**{k: int(v) for k, v in json.loads(data).items()
                                                       if k in Record.__dataclass_fields__})
            except (ValueError, TypeError):
                log.warning("gateway record of %s unreadable; starting it afresh", key)
        return out

    def record(self, key: bytes) -> Record:
        rec = self.records.get(key)
        if rec is None:
            rec = self.records[key] = Record()
        return rec

    def _count(self, key: bytes, name: str, n: int = 1) -> None:
        rec = self.record(key)
        setattr(rec, name, getattr(rec, name) + n)
        self._dirty.add(key)

    def save(self) -> None:
        for key in self._dirty:
            self.store.execute("INSERT OR REPLACE INTO gateway_records VALUES (?, ?)",
                               (key_text(key), json.dumps(self.record(key).as_dict())))
        self._dirty.clear()

    # --- who is known -----------------------------------------------------------------

    def add(self, spec: GatewaySpec, now: float) -> Gateway | None:
        gw = self.gateways.get(spec.public_key)
        if gw is not None:
            return gw
        if len(self.gateways) >= self.max_candidates and spec.source != "config":
            return None
        gw = self.gateways[spec.public_key] = Gateway(
            spec.public_key, spec.endpoint, spec.label, spec.source,
            liveness=Liveness(dead_after_s=self.failover_s, idle_probe_s=IDLE_PROBE_S))
        gw.began = now
        gw.link = self.new_link(gw)
        return gw

    def on_advert(self, raw: bytes, source: str, now: float, wall: float) -> None:
        """An advert seen over mDNS: a candidate; a new one gets a link and a handshake
        (it stays unverified and carries nothing until the handshake announces its key)."""
        cand = self.book.offer(raw, source, wall)
        if cand is None:
            return
        ad = cand.advert
        gw = self.gateways.get(ad.noise_key)
        if gw is not None:
            if cand.verified:
                gw.advert = ad
            return
        endpoint = _endpoint(ad.endpoints)
        if endpoint is not None:
            self.add(GatewaySpec(endpoint, ad.noise_key, ad.label[:32], "mdns"), now)

    def on_handshake(self, key: bytes, info: dict, address: str, now: float) -> bool:
        """Its handshake completed; returns whether it may carry traffic (the tunnel
        address it gave is the TUN's: the first gateway's sets it)."""
        gw = self.gateways.get(key)
        if gw is None:
            return False
        try:
            sign = base64.b64decode(info.get("sign_key") or "", validate=True)
        except (ValueError, TypeError):
            sign = b""
        if len(sign) == 32:
            gw.sign_key = sign
            if self.book.bind(key, sign):
                cand = self.book.candidates.get((key, sign))
                gw.advert = cand.advert if cand else gw.advert
        elif gw.source == "mdns":
            return False           # no key announced: the advert stays unproven
        gw.began = None
        if self.address is None:
            self.address = address
        gw.address_ok = address == self.address
        if not gw.address_ok:
            log.info("gateway %s gave the tunnel address %s, the TUN has %s: %s", key_text(key), address,
                     self.address, "what it carries leaves with that address (source translation)"
                     if self.translate else "it carries nothing")
        revived = not gw.up or gw.liveness.dead
        gw.up = True
        gw.liveness.heard(now)
        if revived:
            self.event(E.GatewayState(E.BUYER, key, gateway=key_text(key), reason="handshake completed", state=gw.state))
        return gw.address_ok or self.translate

    def on_advert_message(self, key: bytes, text: str, wall: float) -> None:
        gw = self.gateways.get(key)
        if gw is None or gw.sign_key is None:
            return
        cand = self.book.fetched(text, key, gw.sign_key, wall)
        if cand is not None:
            gw.advert = cand.advert

    def ask_quote(self, key: bytes, dest: str, fut=None, probe=None) -> bool:
        gw = self.gateways.get(key)
        if gw is None or len(gw.probes) >= 16:
            return False
        gw.probes.append((probe, dest, fut))
        self.quote(key, dest)
        return True

    def on_quote(self, ev, now: float, wall: float) -> None:
        """A QUOTE from a gateway: the answer to its oldest outstanding request (it answers
        in order): the price for what was asked, the probe's round trip, a user's future;
        whether it would sell that destination now (a refusal starts, goes on, or ends)."""
        gw = self.gateways.get(ev.counterpart)
        if gw is None or not gw.probes:
            return
        probe, dest, fut = gw.probes.popleft()
        if ev.retry_after_s:
            gw.refuse(dest, wall + ev.retry_after_s, ev.reason or "no deal")
        elif dest in gw.refusals and gw.refusals[dest][0] <= wall:
            del gw.refusals[dest]           # over, and it would sell again: an offer again
        old = gw.quotes.get(dest)
        gw.quotes[dest] = ev.price
        if dest in DEFAULTS and old is not None and old != ev.price:
            self.refetch_advert(gw, now)      # its priced prefixes may have changed too
        if len(gw.quotes) > MAX_DESTINATIONS:
            gw.quotes.pop(next(iter(gw.quotes)))
        if probe is not None:
            gw.liveness.answered(probe, now)
        if fut is not None and not fut.done():
            fut.set_result(ev)

    def asked_advert(self, key: bytes, now: float) -> None:
        """The daemon sent an ADVERT_REQUEST itself (after a handshake)."""
        gw = self.gateways.get(key)
        if gw is not None:
            gw.advert_asked = now

    def refetch_advert(self, gw: Gateway, now: float) -> bool:
        """Ask a verified gateway for its whole advert again, at most once per ADVERT_REFETCH_S."""
        if self.fetch_advert is None or gw.sign_key is None or gw.state != "up":
            return False
        if gw.advert_asked is not None and now - gw.advert_asked < ADVERT_REFETCH_S:
            return False
        gw.advert_asked = now
        self.fetch_advert(gw.key)
        return True

    # --- the contract engine's events ---------------------------------------------------

    def on_event(self, ev, wall: float) -> None:
        key = ev.counterpart
        if key is None or ev.side != E.BUYER:
            return
        kind = type(ev)
        if kind is E.Accepted:
            self._count(key, "bought")
            if ev.destination and ev.destination not in DEFAULTS:
                self._destination(ev.destination)
        elif kind is E.Paid:
            c = self._contract(key, ev.contract_id)
            self._count(key, "paid")
            if c is not None:
                self._paid[ev.contract_id] = (key, wall, c.up, c.down)
        elif kind is E.UsageMismatch:
            self._count(key, "disagreements")
        elif kind is E.NoDeal and ev.destination and ev.destination not in DEFAULTS:
            # it will not sell this destination now: another gateway may, at once (choose
            # runs after the events of this round), until its back-off ends
            gw = self.gateways.get(key)
            if gw is not None:
                gw.refuse(ev.destination, wall + max(1, ev.retry_after_s), ev.reason or "no deal")
                self.wall = wall
                self._destination(ev.destination)
                if self.choosing:
                    self.choose()

    def _destination(self, dest: str) -> None:
        if dest not in self.destinations and len(self.destinations) < MAX_DESTINATIONS:
            self.destinations.add(dest)

    def _contract(self, key: bytes, cid: str | None):
        b = self.engine.books.get(key)
        return b.find(cid) if b is not None and cid else None

    def _judge_service(self, wall: float) -> None:
        """Paid contracts: traffic back after the payment is delivery; traffic sent and
        nothing back for UNSERVED_S is a payment with no service (one-way traffic would
        look the same: a client sending only such goes on, the gateway last in its rank)."""
        with self.elock:
            for cid, (key, at, up0, down0) in list(self._paid.items()):
                c = self._contract(key, cid)
                if c is None:
                    del self._paid[cid]
                    continue
                if c.down > down0:
                    self._count(key, "delivered")
                    del self._paid[cid]
                elif wall - at >= UNSERVED_S and c.up - up0 >= UNSERVED_UP_BYTES:
                    self._count(key, "unserved")
                    del self._paid[cid]
                    self.event(E.GatewayState(E.BUYER, key, gateway=key_text(key), contract_id=cid, state="unserved",
                                              reason=self.record(key).verdict() or "no service"))

    # --- the control loop ---------------------------------------------------------------

    def tick(self, now: float, wall: float) -> None:
        self.now, self.wall = now, wall
        if self.started is None:
            self.started = now
        if self.choosing:
            for gw in list(self.gateways.values()):
                self._poll(gw, now)
                if gw.advert is not None and gw.advert.expires - wall < ADVERT_RENEW_S:
                    self.refetch_advert(gw, now)
        self._judge_service(wall)
        if self.choosing:
            self.choose()
        self.save()

    def _poll(self, gw: Gateway, now: float) -> None:
        s = gw.link.session if gw.link is not None else None
        if s is None:
            return
        if not s.established:
            if gw.began is None:
                gw.began = now
            elif now - gw.began >= HANDSHAKE_FAIL_S:
                gw.began = now
                self._count(gw.key, "failed_handshakes")
                if gw.up:
                    gw.up = False
                    self.event(E.GatewayState(E.BUYER, gw.key, gateway=key_text(gw.key), reason="handshake failed", state="down"))
            return
        if not gw.up:
            return
        lv = gw.liveness
        since = s.unanswered_since
        if since is None:
            if lv.first_unanswered_send is not None or lv.dead:
                if lv.heard(now):
                    self.event(E.GatewayState(E.BUYER, gw.key, gateway=key_text(gw.key), reason="answering again", state="up"))
        elif lv.first_unanswered_send is None:
            lv.first_unanswered_send = since
        gw.probe_seq += 1
        probe, died = lv.poll(now, gw.probe_seq)
        if died:
            self.event(E.GatewayState(E.BUYER, gw.key, gateway=key_text(gw.key), state="down",
                                      reason=f"no answer for {self.failover_s:g} s while sending"))
        if probe:
            self.ask_quote(gw.key, self._probe_destination(gw), probe=gw.probe_seq)

    def _probe_destination(self, gw: Gateway) -> str:
        dests = [DEFAULTS[0], *sorted(self.destinations)]
        gw.next_quote = (gw.next_quote + 1) % len(dests)
        return dests[gw.next_quote]

    def next_deadline(self) -> float | None:
        if not self.choosing:
            return None
        return min((gw.liveness.next_deadline() for gw in self.gateways.values() if gw.up), default=None)

    # --- choosing -----------------------------------------------------------------------

    def offers(self, dest: str, requote: bool = False) -> list[Offer]:
        """Every linked gateway's offer for dest; requote (when choosing): a refusal whose
        back-off is over asks the QUOTE that lifts it."""
        out = []
        for gw in self.gateways.values():
            if gw.link is None:
                continue
            refused = gw.refusals.get(dest)
            if refused is not None and refused[0] <= self.wall and requote:
                # the offer comes back with a QUOTE that does not refuse, not at the end of
                # the back-off: a relay whose upstream is still gone would refuse again at
                # once, and moving the destination there and back each back-off loses packets
                asked = refused[2]
                if (asked is None or self.wall - asked >= REQUOTE_S) and self.ask_quote(gw.key, dest):
                    gw.refusals[dest] = (refused[0], refused[1], self.wall)
            out.append(Offer(gw.key, None if refused else gw.price(dest),
                             gw.state == "up" and (gw.address_ok or self.translate),
                             gw.liveness.rtt_ms, gw.liveness.loss(self.now), self.record(gw.key),
                             refused[1] if refused else ""))
        return out

    def choose(self) -> None:
        settling = self.started is not None and self.now - self.started < SETTLE_S
        for dest in (*DEFAULTS, *sorted(self.destinations)):
            offers = self.offers(dest, requote=True)
            if settling and dest not in self.chooser.current and any(
                    o.price is None for o in offers if o.up or self.gateways[o.gateway].began is not None):
                continue
            d = self.chooser.choose(dest, offers)
            if not d.moved:
                continue
            link = self.gateways[d.gateway].link if d.gateway is not None else None
            self._route(dest, link)
            self.moves += 1
            if d.gateway is not None and dest not in DEFAULTS:
                with self.elock:
                    self.engine.use_seller(d.gateway, dest)
            self.event(E.DestinationMoved(E.BUYER, d.gateway, destination=dest, reason=d.reason,
                                          gateway=key_text(d.gateway) if d.gateway else None,
                                          previous=key_text(d.previous) if d.previous else None))

    def _route(self, dest: str, link) -> None:
        router = self.links.router
        if link is None:
            router.remove(dest)
        else:
            router.add(dest, link)

    def carried(self, key: bytes) -> list[str]:
        return self.chooser.carried_by(key)

    def view(self, now: float, spent: dict[bytes, int]) -> list[dict]:
        out = []
        for gw in self.gateways.values():
            rec = self.record(gw.key)
            offer = next((o for o in self.offers(DEFAULTS[0]) if o.gateway == gw.key), None)
            out.append({
                "public_key": key_text(gw.key), "label": gw.label or (gw.advert.label if gw.advert else ""),
                "endpoint": f"{gw.endpoint[0]}:{gw.endpoint[1]}", "source": gw.source, "state": gw.state,
                "address_ok": gw.address_ok,
                "address": getattr(gw.link, "address", None),
                "rtt_ms": round(gw.liveness.rtt_ms, 2) if gw.liveness.rtt_ms is not None else None,
                "loss": round(gw.liveness.loss(now), 3), "price_per_kb": gw.price(DEFAULTS[0]),
                "score": list(offer.rank()[:3]) if offer else None,
                "destinations": self.carried(gw.key), "spent_msat": spent.get(gw.key, 0),
                "record": rec.as_dict(), "verdict": rec.verdict()})
        return out


def _endpoint(endpoints) -> tuple[str, int] | None:
    """The first endpoint of an advert this client can use ("host:port", "[v6]:port")."""
    for text in endpoints:
        host, _, port = text.rpartition(":")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
            return host, int(port)
        except ValueError:
            continue
    return None
