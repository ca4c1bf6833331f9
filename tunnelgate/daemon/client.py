"""`tunnelgate up`: a TUN device whose traffic goes to one gateway."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import os
import select
import time

from .. import session as sess
from ..net import setup as netsetup
from ..tun import Tun
from .base import Daemon, recv_batch, udp_socket

log = logging.getLogger("tunnelgate.client")

RECV_SIZE = 65535


class ClientDaemon(Daemon):
    role = "client"

    async def setup(self) -> None:
        cfg = self.cfg
        timing = sess.Timing(keepalive_s=cfg.session.keepalive_s, rekey_after_s=cfg.session.rekey_after_s,
                             dead_after_s=cfg.session.dead_after_s,
                             handshake_retry_s=cfg.session.handshake_retry_s)
        self.initiator = sess.Initiator(self.private_key, cfg.gateway_public_key, timing)
        self.endpoint = cfg.endpoint
        self.address: str | None = None       # assigned by the gateway in the handshake
        self.routed_endpoint: str | None = None
        self.last_handshake: float | None = None
        self.tun = Tun(cfg.tun, cfg.mtu)
        bind = ("::", 0) if ":" in cfg.endpoint[0] else ("0.0.0.0", 0)
        self.sock = udp_socket(bind)
        with self.lock:
            first = self.initiator.begin(time.monotonic(), time.time_ns(), os.urandom(sess.RAND_BYTES))
        self._send(first)
        log.info("connecting to gateway %s:%d", *cfg.endpoint)

    def workers(self):
        return [("udp-to-tun", self.udp_to_tun), ("tun-to-udp", self.tun_to_udp)]

    def shutdown(self) -> None:
        for obj in ("sock", "tun"):
            if hasattr(self, obj):
                getattr(self, obj).close()

    def _send(self, datagram: bytes) -> None:
        try:
            self.sock.sendto(datagram, self.endpoint)
        except OSError as e:
            self.stats["send_errors"] += 1
            log.debug("send to %s failed: %s", self.endpoint, e)

    # --- data path ------------------------------------------------------------------

    def udp_to_tun(self) -> None:
        sock, initiator, tun, stats = self.sock, self.initiator, self.tun, self.stats
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        DATA, CONTROL, DONE = sess.DATA, sess.CONTROL, sess.HANDSHAKE_DONE
        while self.running:
            if not poller.poll(500):
                continue
            now = time.monotonic()
            out = []
            for datagram, addr in recv_batch(sock, RECV_SIZE):
                if datagram[:1] == b"\x02":  # handshake response: control plane
                    with self.lock:
                        res = initiator.receive(datagram, now)
                else:
                    res = initiator.receive(datagram, now)
                if res is None:
                    continue
                kind, payload = res
                if addr[:2] != self.endpoint:
                    # authenticated traffic from a new address: the gateway moved
                    self.endpoint = addr[:2]
                    self.loop.call_soon_threadsafe(self._spawn, self._gateway_moved())
                if kind == DATA:
                    out.append(payload)
                    stats["rx_bytes"] += len(payload)
                elif kind == DONE:
                    self.loop.call_soon_threadsafe(self._spawn, self._handshake_done(payload))
                elif kind == CONTROL:
                    stats["control_rx"] += 1
            if out:
                stats["rx_packets"] += len(out)
                tun.write_batch(out)

    def tun_to_udp(self) -> None:
        sock, initiator, tun, stats = self.sock, self.initiator, self.tun, self.stats
        DATA = sess.DATA
        while self.running:
            packets = tun.read_batch(64, 0.5)
            if not packets:
                continue
            datagrams = initiator.seal_batch(DATA, packets, time.monotonic())
            if len(datagrams) < len(packets):
                stats["drop_no_session"] += len(packets) - len(datagrams)
            endpoint = self.endpoint
            for datagram in datagrams:
                try:
                    sock.sendto(datagram, endpoint)
                except OSError:
                    stats["send_errors"] += 1
            stats["tx_packets"] += len(datagrams)
            stats["tx_bytes"] += sum(map(len, packets))

    # --- control plane (asyncio thread) -------------------------------------------------

    def _spawn(self, coro) -> None:
        # one at a time: route changes must not interleave
        prev = getattr(self, "_net_task", None)

        async def chained():
            if prev is not None:
                await asyncio.gather(prev, return_exceptions=True)
            try:
                await coro
            except Exception:
                log.exception("configuring the tunnel failed")
                self.stats["net_errors"] += 1

        self._net_task = self.loop.create_task(chained())

    async def _handshake_done(self, payload: bytes) -> None:
        self.last_handshake = time.time()
        self.stats["handshakes"] += 1
        try:
            info = json.loads(payload)
            address = str(ipaddress.IPv4Interface(info["address"]))
        except (ValueError, KeyError, TypeError):
            log.error("gateway sent an unusable handshake payload %r; is it a tunnelgate gateway "
                      "of this version?", payload[:100])
            self.stats["bad_handshake_payload"] += 1
            return
        if address != self.address:
            if self.address is not None:
                log.warning("gateway changed our address %s -> %s", self.address, address)
                await self.net(netsetup.teardown, self.paths["net"])
                self.routed_endpoint = None
            await self.net(netsetup.setup_client_tun, self.paths["net"], self.cfg.tun, address, self.cfg.mtu)
            self.address = address
            log.info("tunnel up: %s on %s", address, self.cfg.tun)
        await self._route_endpoint()
        self.ready = True

    async def _gateway_moved(self) -> None:
        log.info("gateway now at %s:%d", *self.endpoint[:2])
        if self.address is not None:
            await self._route_endpoint()

    async def _route_endpoint(self) -> None:
        if self.routed_endpoint != self.endpoint[0]:
            await self.net(netsetup.setup_client_routes, self.paths["net"], self.cfg.tun,
                           list(self.cfg.routes), self.endpoint[0])
            self.routed_endpoint = self.endpoint[0]

    def tick(self, now: float) -> None:
        with self.lock:
            out = self.initiator.poll(now, time.time_ns(), os.urandom(sess.RAND_BYTES))
        for datagram in out:
            self._send(datagram)

    def status(self) -> dict:
        return {
            "gateway": f"{self.endpoint[0]}:{self.endpoint[1]}",
            "gateway_public_key": base64.b64encode(self.cfg.gateway_public_key).decode(),
            "address": self.address,
            "routes": list(self.cfg.routes),
            "connected": self.initiator.established,
            "last_handshake": self.last_handshake,
            "session_stats": dict(self.initiator.stats),
            "tun_stats": dict(self.tun.stats),
        }
