"""`tunnelgate serve`: accepts clients, forwards their traffic to its TUN
(the kernel masquerades it out of the upstream interface) and back."""

from __future__ import annotations

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

log = logging.getLogger("tunnelgate.gateway")

RECV_SIZE = 65535


class GatewayDaemon(Daemon):
    role = "gateway"

    async def setup(self) -> None:
        cfg = self.cfg
        timing = sess.Timing(keepalive_s=cfg.session.keepalive_s, rekey_after_s=cfg.session.rekey_after_s,
                             dead_after_s=cfg.session.dead_after_s,
                             handshake_retry_s=cfg.session.handshake_retry_s)
        self.responder = sess.Responder(self.private_key, timing)
        # peer key -> its 4 address bytes and back; plain dicts so the data path needs no lock
        self.addr_of: dict[bytes, bytes] = {}
        self.peer_of: dict[bytes, bytes] = {}
        for key_b64, addr in self.store.peer_addresses().items():
            self._remember(base64.b64decode(key_b64), addr)
        self.tun = Tun(cfg.tun, cfg.mtu)
        await self.net(netsetup.setup_gateway, self.paths["net"], cfg.tun, str(cfg.address), cfg.upstream_interface, cfg.mtu)
        self.sock = udp_socket(cfg.listen)
        self.ready = True
        log.info("listening on %s:%d, tunnel %s %s, upstream %s", *cfg.listen, cfg.tun, cfg.address,
                 cfg.upstream_interface)

    def _remember(self, peer: bytes, addr: str) -> None:
        packed = ipaddress.IPv4Address(addr).packed
        self.addr_of[peer] = packed
        self.peer_of[packed] = peer

    def workers(self):
        return [("udp-to-tun", self.udp_to_tun), ("tun-to-udp", self.tun_to_udp)]

    def shutdown(self) -> None:
        for obj in ("sock", "tun"):
            if hasattr(self, obj):
                getattr(self, obj).close()

    # --- data path ------------------------------------------------------------------

    def udp_to_tun(self) -> None:
        sock, responder, tun, stats = self.sock, self.responder, self.tun, self.stats
        addr_of = self.addr_of
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        DATA, CONTROL = sess.DATA, sess.CONTROL
        while self.running:
            if not poller.poll(500):
                continue
            now = time.monotonic()
            out = []
            for datagram, addr in recv_batch(sock, RECV_SIZE):
                res = responder.receive(datagram, now, addr)
                if res is None:
                    continue
                if isinstance(res, sess.Handshake):
                    self._handshake(res, now)
                    continue
                peer, kind, payload = res
                if kind == DATA:
                    # forward only what comes from the address we gave this peer
                    if len(payload) >= 20 and payload[0] >> 4 == 4:
                        if payload[12:16] == addr_of.get(peer):
                            out.append(payload)
                            stats["rx_bytes"] += len(payload)
                        else:
                            stats["drop_spoofed"] += 1
                    else:
                        stats["drop_not_ipv4"] += 1
                elif kind == CONTROL:
                    stats["control_rx"] += 1
            if out:
                stats["rx_packets"] += len(out)
                tun.write_batch(out)

    def _handshake(self, hs, now: float) -> None:
        key_b64 = base64.b64encode(hs.peer_public).decode()
        try:
            addr = self.store.assign_address(key_b64, self.cfg.address)
        except Exception as e:
            log.warning("refusing peer %s: %s", key_b64, e)
            self.stats["handshake_refused"] += 1
            return
        payload = json.dumps({"address": f"{addr}/{self.cfg.address.network.prefixlen}",
                              "gateway": str(self.cfg.address.ip)}).encode()
        with self.lock:
            datagram = self.responder.accept(hs, now, os.urandom(sess.RAND_BYTES), payload)
        self._remember(hs.peer_public, addr)
        self.stats["handshakes"] += 1
        try:
            self.sock.sendto(datagram, hs.addr)
        except OSError as e:
            self.stats["send_errors"] += 1
            log.debug("handshake response to %s failed: %s", hs.addr, e)
        log.info("peer %s handshake from %s:%d, address %s", key_b64, *hs.addr[:2], addr)

    def tun_to_udp(self) -> None:
        sock, responder, tun, stats = self.sock, self.responder, self.tun, self.stats
        peer_of = self.peer_of
        DATA = sess.DATA
        while self.running:
            packets = tun.read_batch(64, 0.5)
            if not packets:
                continue
            now = time.monotonic()
            for pkt in packets:
                if pkt[0] >> 4 != 4:
                    stats["drop_not_ipv4"] += 1
                    continue
                peer = peer_of.get(pkt[16:20])
                if peer is None:
                    stats["drop_no_peer"] += 1
                    continue
                datagram = responder.seal(peer, DATA, pkt, now)
                endpoint = responder.endpoint(peer)
                if datagram is None or endpoint is None:
                    stats["drop_no_session"] += 1
                    continue
                try:
                    sock.sendto(datagram, endpoint)
                    stats["tx_bytes"] += len(pkt)
                    stats["tx_packets"] += 1
                except OSError:
                    stats["send_errors"] += 1

    # --- timers and status ---------------------------------------------------------

    def tick(self, now: float) -> None:
        with self.lock:
            out = self.responder.poll(now)
        for addr, datagram in out:
            try:
                self.sock.sendto(datagram, addr)
            except OSError:
                self.stats["send_errors"] += 1

    def status(self) -> dict:
        peers = []
        for peer in self.responder.peers():
            ep = self.responder.endpoint(peer)
            addr = self.addr_of.get(peer)
            peers.append({
                "public_key": base64.b64encode(peer).decode(),
                "address": str(ipaddress.IPv4Address(addr)) if addr else None,
                "endpoint": f"{ep[0]}:{ep[1]}" if ep else None,
            })
        return {
            "listen": f"{self.cfg.listen[0]}:{self.cfg.listen[1]}",
            "address": str(self.cfg.address),
            "upstream_interface": self.cfg.upstream_interface,
            "peers": peers,
            "session_stats": dict(self.responder.stats),
            "tun_stats": dict(self.tun.stats),
        }
