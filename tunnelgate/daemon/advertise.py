"""The gateway's advert at run time: built from its config, signed with a sequence number
kept in the store (so it rises across restarts), signed again at half its lifetime and
whenever the price changes (`tunnelgate set default_price`), announced over mDNS when
``[advertise] mdns = true``, and served whole as ADVERT on the control channel.

mDNS needs no privilege: python-zeroconf binds UDP 5353, above
``net.ipv4.ip_unprivileged_port_start`` (1024), and joining a multicast group needs no
capability; the announcer is started during set-up anyway and keeps its sockets after
the daemon drops root (daemon/privilege.py), and re-announcing only sends on them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time

from ..money import format_price
from ..protocol import advert as A
from ..protocol.advertiser import Advertiser, AdvertTooLarge, Published
from ..session import public_key
from . import discovery
from .base import DaemonError

log = logging.getLogger("tunnelgate.advertise")

SEQ_KEY = "advert.seq"


def methods(payment) -> tuple[str, ...]:
    """What the advert says the gateway takes: the backend, and for cashu each mint."""
    out = [payment.backend]
    if payment.backend == "cashu":
        out += [f"cashu:{url}" for url in payment.get("mints", ())]
    return tuple(m for m in out if len(m) <= 256)[: A.MAX_METHODS]


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def endpoints(cfg, interface_addrs: list[str]) -> tuple[str, ...]:
    """[advertise] endpoints, else the listen address, else (listening on every address)
    the addresses of the interfaces it announces on."""
    if cfg.advertise.endpoints:
        return cfg.advertise.endpoints
    host, port = cfg.listen
    if host not in ("0.0.0.0", "::"):
        return (_endpoint(host, port),)
    return tuple(_endpoint(a, port) for a in interface_addrs)[: A.MAX_ENDPOINTS]


def label(cfg, private_key: bytes) -> str:
    return cfg.advertise.label or "tg-" + public_key(private_key).hex()[:8]


def template(cfg, private_key: bytes, interface_addrs: list[str] = ()) -> A.Advert:
    p = cfg.pricing
    return A.Advert(noise_key=public_key(private_key), sign_key=A.sign_public(private_key),
                    endpoints=endpoints(cfg, list(interface_addrs)), price=p.default_price,
                    prices=tuple(p.prefix_prices), contract_kb=p.contract_kb, contract_s=p.contract_time_s,
                    grace_kb=p.grace_kb, grace_s=p.grace_time_s, methods=methods(cfg.payment),
                    label=label(cfg, private_key))


class Advertising:
    """``price()`` gives the live default price (the engine's, under its lock)."""

    def __init__(self, cfg, private_key: bytes, store, price) -> None:
        self.cfg, self.private_key, self.store, self.price = cfg, private_key, store, price
        self.settings = cfg.advertise
        self.advertiser: Advertiser | None = None
        self.announcer: discovery.Announcer | None = None
        self.error = ""                 # why the last announcement failed, for status
        self._latest: bytes | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Sign the first advert and, with mdns, start announcing it. What the operator
        must fix (a missing interface, an advert too large) stops the start, saying so."""
        try:
            await self._start()
        except (discovery.DiscoveryError, AdvertTooLarge) as e:
            raise DaemonError(f"{self.cfg.path}: [advertise]: {e}") from None
        except OSError as e:
            raise DaemonError(f"cannot announce on {', '.join(self.settings.interfaces)} over mDNS "
                              f"(UDP 5353): {e}; is another mDNS responder bound without sharing the "
                              "port? set [advertise] mdns = false to run without") from None

    async def _start(self) -> None:
        addrs: list[str] = []
        if self.settings.mdns:
            addrs = await asyncio.to_thread(discovery.interface_addresses, list(self.settings.interfaces))
        self.advertiser = Advertiser(self.private_key, template(self.cfg, self.private_key, addrs),
                                     self.settings.lifetime_s, discovery.TXT_BUDGET)
        pub = self._sign(time.time())
        if pub.priced_left_out:
            log.warning("the advert names %d of the %d priced prefixes ([pricing] routes): the others "
                        "do not fit; clients learn their prices from QUOTE", len(pub.whole.prices),
                        len(pub.whole.prices) + pub.priced_left_out)
        if self.settings.mdns:
            self.announcer = discovery.Announcer(list(self.settings.interfaces), pub.whole.label,
                                                 self.cfg.listen[1])
            await self.announcer.start(pub.announced_raw)
            log.info("announcing advert seq %d on %s (%d bytes%s)", pub.seq, ", ".join(self.settings.interfaces),
                     len(pub.announced_raw), ", reduced: the whole one over the control channel"
                     if pub.reduced else "")

    def _sign(self, wall: float) -> Published:
        """A new signing; the sequence number is written before the advert exists, so no
        two adverts ever share one (wall-clock seconds also bound it from below, should the
        database be lost)."""
        last = int(self.store.meta(SEQ_KEY) or 0)
        seq = max(last + 1, int(wall))
        self.store.set_meta(SEQ_KEY, str(seq))
        return self.advertiser.sign(self.price(), seq, wall)

    def tick(self, wall: float) -> None:
        """From the daemon's tick: sign again at half the lifetime."""
        due = self.advertiser.due() if self.advertiser else None
        if due is not None and wall >= due:
            self.refresh(wall)

    def refresh(self, wall: float | None = None) -> None:
        """Sign again now (the price changed, or the advert is half through its life) and
        re-announce."""
        if self.advertiser is None:
            return
        try:
            pub = self._sign(time.time() if wall is None else wall)
        except Exception as e:      # a full disk must not stop the gateway; the old one stands
            self.error = f"cannot sign a new advert: {e}"
            log.error("%s; check the disk of %s", self.error, self.store.path)
            return
        if self.announcer is not None:
            self._latest = pub.announced_raw
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._announce())

    async def _announce(self) -> None:
        while self._latest is not None:
            raw, self._latest = self._latest, None
            try:
                await self.announcer.update(raw)
                self.error = ""
            except Exception as e:      # the LAN may be gone for a while; the next update retries
                self.error = f"re-announcing failed: {e}"
                log.warning("%s", self.error)

    def on_request(self, peer: bytes, now: float):
        return self.advertiser.on_request(peer, now) if self.advertiser else None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.announcer is not None:
            try:
                await self.announcer.close()
            except Exception as e:      # stopping goes on: the adverts expire by themselves
                log.warning("closing the mDNS announcer failed: %s", e)
            self.announcer = None

    def status(self) -> dict:
        pub = self.advertiser.current if self.advertiser else None
        st = {"mdns": self.settings.mdns, "interfaces": list(self.settings.interfaces),
              "announcing": self.announcer is not None, "error": self.error,
              **(self.advertiser.stats if self.advertiser else {})}
        if pub is not None:
            st.update(seq=pub.seq, expires=pub.expires, signed_at=pub.signed_at, size=len(pub.whole_raw),
                      announced_size=len(pub.announced_raw), reduced=pub.reduced,
                      priced_left_out=pub.priced_left_out)
        return st

    def view(self) -> dict:
        """The current advert, decoded (`tunnelgate advert`)."""
        pub = self.advertiser.current if self.advertiser else None
        if pub is None:
            return {}
        return {**describe(A.decode(pub.whole_raw)), "size": len(pub.whole_raw),
                "announced": {"size": len(pub.announced_raw), "reduced": pub.reduced,
                              "mdns": self.announcer is not None, "interfaces": list(self.settings.interfaces)}}


def describe(ad: A.Advert) -> dict:
    """An advert as people and --json read it: keys in base64, prices as numbers and text."""
    return {"noise_key": base64.b64encode(ad.noise_key).decode(), "sign_key": base64.b64encode(ad.sign_key).decode(),
            "label": ad.label, "endpoints": list(ad.endpoints), "price": ad.price,
            "price_text": format_price(ad.price),
            "prices": [{"prefix": p, "price": v, "price_text": format_price(v)} for p, v in ad.prices],
            "contract_kb": ad.contract_kb, "contract_s": ad.contract_s, "grace_kb": ad.grace_kb,
            "grace_s": ad.grace_s, "methods": list(ad.methods), "seq": ad.seq, "expires": ad.expires,
            "more": ad.more}
