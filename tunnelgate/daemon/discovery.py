"""Finding gateways on the link: DNS-SD over multicast DNS (python-zeroconf).

A gateway announces ``<label>._tunnelgate._udp.local.`` on the interfaces its
config names, its signed advert (protocol/advert.py) split over TXT entries
``a0``, ``a1``, ... (a TXT string holds at most 255 bytes). A client browses
for the service type on its interfaces and hands every advert it resolves to
an ``AdvertBook``, which checks signature, sequence, expiry and bounds; this
module only moves bytes. mDNS carries no authentication: everything learnt
here stays unverified until the gateway completes a Noise handshake.

Adverts over ``TXT_BUDGET`` bytes are not announced whole: the gateway
announces a reduced advert (no priced prefixes) and the client asks for the
whole one over the tunnel's control channel after the handshake.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Callable

from pyroute2 import IPRoute
from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger("tunnelgate.discovery")

SERVICE = "_tunnelgate._udp.local."
CHUNK = 240          # bytes of advert per TXT entry (key "aN=" + value <= 255)
TXT_BUDGET = 1300    # bytes of advert in one announcement: fits one mDNS packet on a 1500 MTU
MAX_CHUNKS = (TXT_BUDGET + CHUNK - 1) // CHUNK
RESOLVE_MS = 3000


class DiscoveryError(Exception):
    pass


def to_txt(raw: bytes) -> dict[str, bytes]:
    if len(raw) > TXT_BUDGET:
        raise DiscoveryError(f"advert of {len(raw)} bytes is over the {TXT_BUDGET} an announcement carries")
    parts = [raw[i:i + CHUNK] for i in range(0, len(raw), CHUNK)]
    return {f"a{i}": part for i, part in enumerate(parts)} | {"n": str(len(parts)).encode()}


def from_txt(props: dict) -> bytes | None:
    """Reassemble an advert from TXT properties (keys and values as bytes). None if incomplete."""
    try:
        n = int(props.get(b"n") or b"")
    except ValueError:
        return None
    if not 1 <= n <= MAX_CHUNKS:
        return None
    parts = [props.get(f"a{i}".encode()) for i in range(n)]
    if any(p is None for p in parts):
        return None
    return b"".join(parts)


def interface_addresses(names: list[str]) -> list[str]:
    """(Blocking netlink: from a thread when a loop runs.) The IPv4 and IPv6 addresses of the named interfaces (link-local v6 left out:
    python-zeroconf binds to global ones). Raises DiscoveryError naming a missing one."""
    out: list[str] = []
    with IPRoute() as ipr:
        for name in names:
            idx = ipr.link_lookup(ifname=name)
            if not idx:
                raise DiscoveryError(f"interface {name!r} (in [advertise]/[discovery] interfaces) does not exist")
            for msg in ipr.get_addr(index=idx[0]):
                addr = msg.get_attr("IFA_ADDRESS")
                if addr and not ipaddress.ip_address(addr).is_link_local:
                    out.append(addr)
    return out


def _zeroconf(addresses: list[str]) -> AsyncZeroconf:
    v6 = any(":" in a for a in addresses)
    v4 = any(":" not in a for a in addresses)
    version = IPVersion.All if v4 and v6 else (IPVersion.V6Only if v6 else IPVersion.V4Only)
    return AsyncZeroconf(interfaces=addresses, ip_version=version)


class Announcer:
    """Announces one gateway's advert; ``update`` re-announces a newer one."""

    def __init__(self, interfaces: list[str], label: str, port: int) -> None:
        self.interfaces, self.port = interfaces, port
        self.name = f"{label}.{SERVICE}"
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None

    def _service(self, raw: bytes, addresses: list[str]) -> AsyncServiceInfo:
        return AsyncServiceInfo(SERVICE, self.name, port=self.port, properties=to_txt(raw),
                                parsed_addresses=addresses)

    async def start(self, raw: bytes) -> None:
        addresses = await asyncio.to_thread(interface_addresses, self.interfaces)
        if not addresses:
            raise DiscoveryError(f"no addresses on {self.interfaces} to announce on")
        self._zc = _zeroconf(addresses)
        self._info = self._service(raw, addresses)
        await self._zc.async_register_service(self._info, allow_name_change=True)

    async def update(self, raw: bytes) -> None:
        if self._zc is None or self._info is None:
            return
        # the registered name (allow_name_change may have changed it) and host name stay
        old = self._info
        self._info = AsyncServiceInfo(SERVICE, old.name, port=self.port, properties=to_txt(raw),
                                      parsed_addresses=list(old.parsed_addresses()), server=old.server)
        await self._zc.async_update_service(self._info)

    async def close(self) -> None:
        if self._zc is not None:
            try:
                if self._info is not None:
                    await self._zc.async_unregister_service(self._info)
            finally:
                await self._zc.async_close()
                self._zc = None


class Browser:
    """Browses for gateways; calls ``on_advert(raw, source)`` for every advert resolved
    (``source``: the first address announced, for the book's per-source limit).
    Resolutions run one at a time, so a flood of names costs a queue, not tasks."""

    def __init__(self, interfaces: list[str], on_advert: Callable[[bytes, str], None],
                 max_pending: int = 64) -> None:
        self.interfaces, self.on_advert = interfaces, on_advert
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._queue: asyncio.Queue[str] = asyncio.Queue(max_pending)
        self._task: asyncio.Task | None = None
        self.stats = {"resolved": 0, "unresolved": 0, "dropped": 0}

    async def start(self) -> None:
        addresses = await asyncio.to_thread(interface_addresses, self.interfaces)
        if not addresses:
            raise DiscoveryError(f"no addresses on {self.interfaces} to browse on")
        self._zc = _zeroconf(addresses)
        self._task = asyncio.create_task(self._resolve_loop())
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE, handlers=[self._changed])

    def _changed(self, zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            return   # an advert ends by expiry, not by a goodbye anyone could send
        try:
            self._queue.put_nowait(name)
        except asyncio.QueueFull:
            self.stats["dropped"] += 1

    async def _resolve_loop(self) -> None:
        while True:
            name = await self._queue.get()
            info = AsyncServiceInfo(SERVICE, name)
            try:
                ok = await info.async_request(self._zc.zeroconf, RESOLVE_MS)
            except Exception as e:   # a malformed record must not end discovery
                log.debug("resolving %s failed: %s", name, e)
                ok = False
            raw = from_txt(info.properties or {}) if ok else None
            if raw is None:
                self.stats["unresolved"] += 1
                continue
            self.stats["resolved"] += 1
            addrs = info.parsed_addresses()
            self.on_advert(raw, addrs[0] if addrs else name)

    async def close(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._task is not None:
            self._task.cancel()
        if self._zc is not None:
            await self._zc.async_close()
            self._zc = None
