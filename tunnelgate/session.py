"""Sans-IO encrypted session: Noise IK handshake, transport, timers.

Nothing here reads a clock, draws randomness or touches a socket: `now`
(monotonic seconds), `wall_ns` and random bytes come in as arguments and
datagrams to send come out as return values.

Peer input never raises: anything malformed, unauthenticated, replayed or
stale is dropped, counted in `stats`, and never answered.

Threads: seal/seal_batch may run concurrently from any thread (the per
transport counter is an itertools.count, whose next() is atomic under the
GIL, so a nonce never repeats). State changes (handshake completion, key
switch, timers) take the lock the caller passes as `lock=` (a threading.Lock
from a daemon whose threads share the object; without one nothing is locked,
for use from one thread); the transport receive path only takes it when a
datagram confirms a new key.  The lock comes in from outside so that this
module stays free of threads, like it is of clocks and sockets.

Over 600 lines: handshake, transport and the batched receive loop (one for both roles,
_open_groups) share the hot path's locals. Moving Transport and that loop to a module of
their own waits for the handshake hand-off of issue 22 to land, so the two changes do not
collide in this file.
"""

from __future__ import annotations

import itertools
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from noise.connection import Keypair, NoiseConnection

from .cookie import CookieChecker, CookieJar
from .offload.chunks import CHUNKS_MAX, DATA_CHUNK, OPENABLE_KINDS, chunk_kind
from .replay import ReplayWindow
from .wire import (
    CONTROL,
    COOKIE,
    DATA,
    DATA_PARTIAL,
    INDEX,
    INIT,
    INIT_HDR,
    INIT_MAX,
    INIT_MIN,
    KEEPALIVE,
    MAC_LEN,
    NONCE,
    REJECT_AFTER_MESSAGES,
    RESP,
    RESP_HDR,
    RESP_MIN,
    TIMESTAMP,
    TRANSPORT_HDR,
    TRANSPORT_KINDS,
    TRANSPORT_MIN,
    TYPE,
)

__all__ = [
    "PROTOCOL_NAME", "PROTOCOL_NAME_AESGCM", "PROTOCOLS", "CIPHERS", "DATA",
    "DATA_PARTIAL", "DATA_CHUNK", "KEEPALIVE", "CONTROL", "resolve_cipher", "HANDSHAKE_DONE", "RAND_BYTES", "REJECT_AFTER_MESSAGES",
    "public_key", "SessionError", "Timing", "Transport", "Initiator",
    "Handshake", "Initiation", "Responder",
]

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
PROTOCOL_NAME_AESGCM = b"Noise_IK_25519_AESGCM_BLAKE2s"
# The transport AEAD follows the handshake's cipher so one name fixes both.
PROTOCOLS = {
    "chacha": (PROTOCOL_NAME, ChaCha20Poly1305),
    "aesgcm": (PROTOCOL_NAME_AESGCM, AESGCM),
}
# "auto" (an Initiator's default) picks AES-GCM on CPUs with AES instructions
# (about twice as fast as ChaCha20-Poly1305 per packet there), ChaCha otherwise.
CIPHERS = ("auto", *PROTOCOLS)


def _cpu_has_aes(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return False
    # x86 "flags : ... aes ...", arm64 "Features : ... aes ..."
    return any(line.split(":", 1)[0].strip() in ("flags", "Features") and "aes" in line.split()
               for line in text.splitlines())


def resolve_cipher(cipher: str) -> str:
    """"auto" -> "aesgcm" or "chacha" for this CPU; others unchanged (validated)."""
    if cipher == "auto":
        return "aesgcm" if _cpu_has_aes() else "chacha"
    if cipher not in PROTOCOLS:
        raise SessionError(f"unknown cipher {cipher!r}: one of {', '.join(CIPHERS)}")
    return cipher

HANDSHAKE_DONE = RESP
RAND_BYTES = 36  # 32 ephemeral private key + 4 index
_INDEX_MASK = 0xFFFFFFFF
# Bounds memory for handshake timestamps of keys the daemon never accepted
# (any key may send an INIT).
_MAX_UNACCEPTED = 4096

_STAT_KEYS = ("malformed", "bad_mac", "bad_mac1", "replay", "unknown_index",
              "stale_handshake", "expired", "handshakes", "cookies")


class SessionError(Exception):
    pass


def public_key(private: bytes) -> bytes:
    """X25519 public key of a 32-byte private key."""
    try:
        key = X25519PrivateKey.from_private_bytes(private)
    except (ValueError, TypeError) as e:
        raise SessionError(f"bad private key: {e}") from None
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Timing:
    # Client: send a KEEPALIVE whenever it sent nothing for this long, so NAT
    # state stays up and dead-peer detection always has something to time.
    keepalive_s: float = 10.0
    rekey_after_s: float = 120.0
    rekey_after_messages: int = 2**60
    reject_after_s: float = 180.0  # a transport older than this is never used
    handshake_retry_s: float = 1.0
    # Client: it sent something and heard nothing authenticated for this long:
    # the gateway probably lost its state (restart), so handshake again.
    dead_after_s: float = 3.0
    previous_keep_s: float = 10.0  # old transport decrypts in-flight datagrams
    # Gateway: a KEEPALIVE goes to a peer whose datagram we have not followed
    # with any of ours for this long. Must be below dead_after_s, or a quiet
    # but live gateway would look dead to the client.
    ack_after_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.ack_after_s < self.dead_after_s:
            raise SessionError("Timing: ack_after_s must be < dead_after_s")
        if not self.rekey_after_s < self.reject_after_s:
            raise SessionError("Timing: rekey_after_s must be < reject_after_s")


def _split_rand(rand: bytes) -> tuple[bytes, int]:
    if len(rand) != RAND_BYTES:
        raise SessionError(f"rand must be {RAND_BYTES} bytes, got {len(rand)}")
    return bytes(rand[:32]), INDEX.unpack_from(rand, 32)[0]


def _new_conn(protocol: bytes, static_private: bytes) -> NoiseConnection:
    conn = NoiseConnection.from_name(protocol)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static_private)
    return conn


def _set_ephemeral(conn: NoiseConnection, eph: bytes) -> None:
    # noiseprotocol 0.3.1 copies its keypairs into the HandshakeState at
    # start_handshake(): set_keypair_from_private_bytes(EPHEMERAL) after that
    # is silently ignored and write_message() would draw an OS-random key
    # (and before it, validate() warns). So set it through the public call
    # and hand the same key to the live handshake state.
    conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, eph)
    conn.noise_protocol.handshake_state.e = conn.noise_protocol.keypairs["e"]


def _transport_keys(conn: NoiseConnection) -> tuple[bytes, bytes]:
    p = conn.noise_protocol
    return p.cipher_state_encrypt.k, p.cipher_state_decrypt.k


def _new_stats() -> dict[str, int]:
    return dict.fromkeys(_STAT_KEYS, 0)


class Transport:
    """The keys of one completed handshake. seal() from any thread; open()
    from one thread at a time (the replay window is not locked)."""

    __slots__ = ("local_index", "remote_index", "created_at", "send_count",
                 "stats", "_enc", "_dec", "_counter", "_replay")

    def __init__(self, send_key: bytes, recv_key: bytes, local_index: int,
                 remote_index: int, created_at: float, aead=ChaCha20Poly1305,
                 stats: dict[str, int] | None = None) -> None:
        self.local_index = local_index
        self.remote_index = remote_index
        self.created_at = created_at
        # Highest counter handed out + 1; written racily by concurrent
        # sealers, which is fine for a rekey trigger.
        self.send_count = 0
        self.stats = _new_stats() if stats is None else stats
        self._enc = aead(send_key)
        self._dec = aead(recv_key)
        self._counter = itertools.count()
        self._replay = ReplayWindow()

    def seal(self, kind: int, payload: bytes) -> bytes:
        if kind not in TRANSPORT_KINDS:
            raise SessionError(f"not a transport kind: {kind}")
        n = next(self._counter)
        if n >= REJECT_AFTER_MESSAGES:
            raise SessionError("transport counter exhausted")
        self.send_count = n + 1
        header = TRANSPORT_HDR.pack(kind, self.remote_index, n)
        return header + self._enc.encrypt(NONCE.pack(n), payload, header)

    def seal_batch(self, kind: int, payloads: list[bytes]) -> list[bytes]:
        """seal() for each payload, with the lookups hoisted out of the loop
        (this runs per TSO segment). kind DATA_CHUNK: the payloads are the
        chunks of one burst, in order; each gets its index/count type word."""
        if kind == DATA_CHUNK:
            if not 1 <= len(payloads) <= CHUNKS_MAX:
                raise SessionError(f"a burst has 1..{CHUNKS_MAX} chunks, not {len(payloads)}")
        elif kind not in TRANSPORT_KINDS:
            raise SessionError(f"not a transport kind: {kind}")
        if not payloads:
            return []
        counter, pack, nonce, encrypt = self._counter, TRANSPORT_HDR.pack, NONCE.pack, self._enc.encrypt
        remote = self.remote_index
        out = []
        append = out.append
        n = 0
        if kind == DATA_CHUNK:
            kind = chunk_kind(0, len(payloads))
            step = 1 << 8
        else:
            step = 0
        for p in payloads:
            n = next(counter)
            if n >= REJECT_AFTER_MESSAGES:
                raise SessionError("transport counter exhausted")
            header = pack(kind, remote, n)
            append(header + encrypt(nonce(n), p, header))
            kind += step
        self.send_count = n + 1
        return out

    def open(self, datagram: bytes) -> tuple[int, bytes] | None:
        stats = self.stats
        if len(datagram) < TRANSPORT_MIN:
            stats["malformed"] += 1
            return None
        kind, index, n = TRANSPORT_HDR.unpack_from(datagram)
        if kind not in OPENABLE_KINDS:
            stats["malformed"] += 1
            return None
        if index != self.local_index:
            stats["unknown_index"] += 1
            return None
        payload = self.open_body(datagram, n)
        return None if payload is None else (kind, payload)

    def opener(self):
        """(decrypt, replay_update, stats): open_body's parts, for the batch
        receivers' loop over the continuation of a chunk run (no call per datagram)."""
        return self._dec.decrypt, self._replay.update, self.stats

    def open_body(self, datagram, n: int) -> bytes | None:
        """The payload of a datagram whose header (counter `n`) was checked;
        None (counted) otherwise. The AEAD first, then the replay window marks
        the counter seen (only authenticated counters move it): a replay costs
        one decryption, as any forged datagram does, and the common case one
        window call. The batch receivers call this directly."""
        try:
            payload = self._dec.decrypt(NONCE.pack(n), datagram[16:], datagram[:16])
        except InvalidTag:
            self.stats["bad_mac"] += 1
            return None
        if not self._replay.update(n):
            self.stats["replay"] += 1
            return None
        return payload


def _extend_run(buf, view, o: int, n: int, seg: int, kind: int, index: int, opener, run: list) -> int:
    """A chunk of type word `kind` just opened on key `index` and started
    `run`: open the datagrams from buf[o] on (every `seg` bytes, up to n) that
    continue it (the burst's next type words, same key), decrypted and
    replay-checked here, with no call or result of their own, their payloads
    appended to `run`. Returns the offset of the first datagram left to the
    caller; one that fails the AEAD or the replay window is counted, skipped
    and ends the run. The batch receivers' hot loop: most datagrams of a bulk
    transfer pass only here."""
    # the burst's last chunk's type word (layout: offload/chunks.py)
    last = (kind & 0xFF00FF) | ((kind >> 16) - 1) << 8
    if kind == last:
        return o
    decrypt, seen, stats = opener
    unpack, nonce = TRANSPORT_HDR.unpack_from, NONCE.pack
    nk = kind + 256
    for o in range(o, n, seg):
        if n - o < TRANSPORT_MIN:
            return o
        k, i, ctr = unpack(buf, o)
        if k != nk or i != index:
            return o
        try:
            payload = decrypt(nonce(ctr), view[o + 16:o + seg], buf[o:o + 16])
        except InvalidTag:
            stats["bad_mac"] += 1
            return o + seg
        if not seen(ctr):
            stats["replay"] += 1
            return o + seg
        run.append(payload)
        if k == last:
            # what follows is not this burst's; a datagram claiming a chunk past
            # the last is malformed, for receive() to count as such
            return o + seg
        nk = k + 256
    return n


_NO_KEY = (-1, None, None, None, None)     # _open_groups: no key to open inline


def _open_groups(groups, now: float, fast, slow, seen) -> list:
    """The batch receive loop of both roles (Initiator/Responder.receive_groups).

    groups: (buffer, segment size, addr) as UDP GRO gives them (offload.udp.
    UdpReceiver.recv_groups): datagrams of `segment size` bytes back to back,
    the last may be shorter, all from addr. Returns (peer public, kind,
    payload) per datagram that opened, with the chunks of one burst (type
    words index, index + 1, ... on one key, in one buffer) as one result
    (peer, kind of the first, [payloads]); anything else `slow` returns (a
    Handshake) as it is.

    fast: (index, open_body, opener, peer public, owner) of the one key opened
    inline, or None. A transport datagram on it skips the peer lookup and the
    timer checks (`now` is one instant for the whole batch); one that
    continues a chunk run is decrypted and replay-checked in _extend_run with
    no call or result of its own. This runs per datagram at line rate.
    slow(datagram, addr) -> (result or None, fast or None): the role's
    receive() for any other datagram, and the key to open inline from there on
    (None: keep the one there is).
    seen(owner, addr): once per buffer in which the inline key opened
    something (where the peer is now, its timers), and before that key changes."""
    out = []
    append = out.append
    unpack, kinds = TRANSPORT_HDR.unpack_from, OPENABLE_KINDS
    if fast is not None:
        cached, open_body, opener, public, owner = fast
    else:
        cached = -1
    for buf, seg, addr in groups:
        view = memoryview(buf)
        n = len(buf)
        whole = seg >= TRANSPORT_MIN
        hit = False
        o, stop = 0, n or 1
        while o < stop:
            end = o + seg
            if whole and n - o >= TRANSPORT_MIN:
                kind, index, ctr = unpack(buf, o)
                if index == cached and kind in kinds:
                    payload = open_body(view[o:end], ctr)
                    o = end
                    if payload is None:
                        continue
                    hit = True
                    if kind & 0xFF == DATA_CHUNK:
                        run = [payload]
                        append((public, kind, run))
                        o = _extend_run(buf, view, o, n, seg, kind, cached, opener, run)
                    else:
                        append((public, kind, payload))
                    continue
            datagram = bytes(view[o:end])
            o = end
            res, key = slow(datagram, addr)
            if res is None:
                continue
            append(res)
            if key is not None:
                if hit:
                    seen(owner, addr)
                    hit = False
                cached, open_body, opener, public, owner = key
                if cached >= 0 and res[1] & 0xFF == DATA_CHUNK:
                    o = _extend_run(buf, view, o, n, seg, res[1], cached, opener, res[2])
        if hit:
            seen(owner, addr)
    return out


def _answered(initiator, addr) -> None:
    """Initiator's seen() for _open_groups: the gateway answered, from addr."""
    initiator._unanswered_since = None
    initiator.source = addr


class _Pending:
    """An initiator handshake in flight. Keeps its inputs so the noise state
    can be rebuilt: a forged RESP that fails to decrypt has already consumed
    the state, and must not stop the real RESP from completing."""

    __slots__ = ("conn", "index", "eph", "ts", "payload", "sent_at")

    def __init__(self, conn, index, eph, ts, payload, sent_at):
        self.conn = conn
        self.index = index
        self.eph = eph
        self.ts = ts
        self.payload = payload
        self.sent_at = sent_at


class Initiator:
    """Client side of one gateway."""

    def __init__(self, static_private: bytes, responder_public: bytes,
                 timing: Timing = Timing(), cipher: str = "auto",
                 lock: AbstractContextManager | None = None) -> None:
        # The initiator chooses the cipher; the responder accepts either.
        self.cipher = cipher = resolve_cipher(cipher)
        if len(responder_public) != 32:
            raise SessionError("responder public key must be 32 bytes")
        public_key(static_private)  # validates early, not at the first begin()
        self._protocol, self._aead = PROTOCOLS[cipher]
        self._static = bytes(static_private)
        self._remote = bytes(responder_public)
        self._cookies = CookieJar(self._remote)
        self.timing = timing
        self.stats = _new_stats()
        self.response_payload: bytes | None = None
        self._lock = lock if lock is not None else nullcontext()
        self._current: Transport | None = None
        self._previous: Transport | None = None
        self._previous_until = 0.0
        self._pending: _Pending | None = None
        self._payload: bytes | None = None  # reused by automatic re-handshakes
        self._last_ts = 0
        self._last_sent = 0.0
        # First send after the latest authenticated receive; None = answered.
        self._unanswered_since: float | None = None
        # where the latest authenticated datagram came from (receive_groups): the
        # data path compares it with where it sends, to follow a gateway that moved
        self.source = None

    @property
    def established(self) -> bool:
        return self._current is not None

    @property
    def current(self) -> Transport | None:
        return self._current

    @property
    def unanswered_since(self) -> float | None:
        """The first send after the latest authenticated receive (None: answered): what
        the client's failover reads, at no cost to the data path, which keeps it anyway."""
        return self._unanswered_since

    def owns(self, index: int) -> bool:
        """Whether a datagram with this receiver index is ours (current, previous or the
        handshake in flight): how a client with several gateways finds its session."""
        return any(t is not None and t.local_index == index for t in (self._current, self._previous)) \
            or (self._pending is not None and self._pending.index == index)

    # -- handshake ---------------------------------------------------------

    def _write_init(self, index: int, eph: bytes, ts: int, payload: bytes):
        header = INIT_HDR.pack(INIT, index)
        conn = _new_conn(self._protocol, self._static)
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, self._remote)
        # The header is outside the noise message: the prologue authenticates
        # it, so a rewritten sender index fails like any other forgery.
        conn.set_prologue(header)
        conn.set_as_initiator()
        conn.start_handshake()
        _set_ephemeral(conn, eph)
        return conn, header + bytes(conn.write_message(TIMESTAMP.pack(ts) + payload))

    def begin(self, now: float, wall_ns: int, rand: bytes, payload: bytes = b"") -> bytes:
        with self._lock:
            return self._begin(now, wall_ns, rand, payload)

    def _begin(self, now, wall_ns, rand, payload) -> bytes:
        eph, index = _split_rand(rand)
        busy = {t.local_index for t in (self._current, self._previous) if t}
        while index in busy:
            index = (index + 1) & _INDEX_MASK
        # Strictly increasing even if the wall clock stalls or steps back, or
        # the gateway would take a retry for a replay.
        ts = max(int(wall_ns), self._last_ts + 1)
        try:
            conn, datagram = self._write_init(index, eph, ts, bytes(payload))
        except Exception as e:  # noise raises assorted types for local misuse
            raise SessionError(f"cannot write handshake: {e}") from None
        datagram = self._cookies.add_macs(datagram, now)
        if len(datagram) > INIT_MAX:
            raise SessionError(f"handshake payload too long: {len(payload)} bytes make a "
                               f"{len(datagram)}-byte INIT, the limit is {INIT_MAX}")
        self._last_ts = ts
        self._payload = bytes(payload)
        self._pending = _Pending(conn, index, eph, ts, self._payload, now)
        return datagram

    def _complete(self, datagram, now: float):
        stats = self.stats
        if len(datagram) < RESP_MIN:
            stats["malformed"] += 1
            return None
        _, sender, receiver = RESP_HDR.unpack_from(datagram)
        with self._lock:
            p = self._pending
            if p is None or receiver != p.index:
                stats["unknown_index"] += 1
                return None
            try:
                payload = p.conn.read_message(bytes(datagram[RESP_HDR.size:]))
                ok = p.conn.handshake_finished and len(payload) >= INDEX.size
            except Exception:  # noise raises InvalidTag, ValueError, its own...
                ok = False
            # The responder repeats its index inside the authenticated payload,
            # as it picks it after our prologue was fixed.
            if not ok or INDEX.unpack_from(payload)[0] != sender:
                stats["bad_mac"] += 1
                p.conn, _ = self._write_init(p.index, p.eph, p.ts, p.payload)
                return None
            payload = bytes(payload[INDEX.size:])
            send_key, recv_key = _transport_keys(p.conn)
            t = Transport(send_key, recv_key, p.index, sender, now, self._aead, stats)
            if self._current is not None:
                self._previous = self._current
                self._previous_until = now + self.timing.previous_keep_s
            self._current = t
            self._pending = None
            self.response_payload = payload
            self._unanswered_since = None
            stats["handshakes"] += 1
        return HANDSHAKE_DONE, payload

    # -- receive -----------------------------------------------------------

    def receive_groups(self, groups, now: float, resp_lock=None) -> list:
        """receive() for each datagram of each (buffer, segment size, addr) in
        order (see _open_groups) -> (the gateway's public key, kind, payload)
        for each that opened, a run of chunks as one result with [payloads];
        `source` says where the latest came from. `resp_lock`, if given, is held
        while a handshake response is processed (the lock the caller holds
        around begin() and poll())."""
        t = self._current
        if t is not None and now - t.created_at < self.timing.reject_after_s:
            fast = (t.local_index, t.open_body, t.opener(), self._remote, self)
        else:
            fast = None
        remote, receive = self._remote, self.receive

        def slow(datagram, addr):
            if resp_lock is not None and datagram[:1] in (b"\x02", b"\x08"):
                with resp_lock:
                    res = receive(datagram, now)
            else:
                res = receive(datagram, now)
            if res is None:
                return None, None
            self.source = addr
            kind = res[0]
            return (remote, kind, [res[1]] if kind & 0xFF == DATA_CHUNK else res[1]), None

        return _open_groups(groups, now, fast, slow, _answered)

    def receive(self, datagram: bytes, now: float) -> tuple[int, bytes] | None:
        if len(datagram) < 8:
            self.stats["malformed"] += 1
            return None
        kind = TYPE.unpack_from(datagram)[0]
        if kind == RESP:
            return self._complete(datagram, now)
        if kind == COOKIE:
            # the gateway is under load: the cookie goes into the MAC2 of our next
            # INIT (the usual retry), as in WireGuard; nothing to hand up
            if self._pending is not None and self._cookies.consume(datagram, now):
                self.stats["cookies"] += 1
            else:
                self.stats["malformed"] += 1
            return None
        if kind not in OPENABLE_KINDS:
            self.stats["malformed"] += 1
            return None
        index = INDEX.unpack_from(datagram, 4)[0]
        t = self._current
        if t is None or t.local_index != index:
            t = self._previous
            if t is None or t.local_index != index:
                self.stats["unknown_index"] += 1
                return None
            if now >= self._previous_until:
                self.stats["expired"] += 1
                return None
        if now - t.created_at >= self.timing.reject_after_s:
            self.stats["expired"] += 1
            return None
        result = t.open(datagram)
        if result is not None:
            self._unanswered_since = None
        return result

    # -- send --------------------------------------------------------------

    def _sendable(self, now: float) -> Transport | None:
        t = self._current
        if t is None or now - t.created_at >= self.timing.reject_after_s:
            return None
        return t

    def seal(self, kind: int, payload: bytes, now: float, answered: bool = True) -> bytes | None:
        """answered=False: a datagram that asks for no answer (a control ACK) does not
        start the silence after which the gateway counts as dead."""
        t = self._sendable(now)
        if t is None:
            return None
        datagram = t.seal(kind, payload)
        if answered:
            self._sent(now)
        else:
            self._last_sent = now
        return datagram

    def seal_batch(self, kind: int, payloads: list[bytes], now: float) -> list[bytes]:
        t = self._sendable(now)
        if t is None or not payloads:
            return []
        out = t.seal_batch(kind, payloads)
        self._sent(now)
        return out

    def _sent(self, now: float) -> None:
        self._last_sent = now
        if self._unanswered_since is None:
            self._unanswered_since = now

    # -- timers ------------------------------------------------------------

    def poll(self, now: float, wall_ns: int, rand: bytes) -> list[bytes]:
        out = []
        tm = self.timing
        with self._lock:
            if self._previous is not None and now >= self._previous_until:
                self._previous = None
            t = self._current
            if t is not None and now - t.created_at >= tm.reject_after_s:
                self._current = t = None
            p = self._pending
            if p is not None:
                if now - p.sent_at >= tm.handshake_retry_s:
                    out.append(self._begin(now, wall_ns, rand, p.payload))
            elif self._payload is not None and (
                t is None
                or now - t.created_at >= tm.rekey_after_s
                or t.send_count >= tm.rekey_after_messages
                or (self._unanswered_since is not None
                    and now - self._unanswered_since >= tm.dead_after_s)
            ):
                out.append(self._begin(now, wall_ns, rand, self._payload))
        # A fresh key is confirmed to the gateway by our first datagram on it
        # (it keeps sending on the old key until then), so send one at once.
        if t is not None and (t.send_count == 0 or now - self._last_sent >= tm.keepalive_s):
            out.append(t.seal(KEEPALIVE, b""))
            self._sent(now)
        return out

    def next_deadline(self) -> float | None:
        tm = self.timing
        times = []
        p = self._pending
        t = self._current
        if p is not None:
            times.append(p.sent_at + tm.handshake_retry_s)
        if self._previous is not None:
            times.append(self._previous_until)
        if t is not None:
            times.append(t.created_at + tm.reject_after_s)
            if t.send_count == 0:
                times.append(t.created_at)
            else:
                times.append(self._last_sent + tm.keepalive_s)
            if p is None:
                times.append(t.created_at + tm.rekey_after_s)
                if self._unanswered_since is not None:
                    times.append(self._unanswered_since + tm.dead_after_s)
        return min(times) if times else None


class Initiation(NamedTuple):
    """An INIT whose type, length and MAC1 are right: the key exchange is still to
    do (Responder.handshake). The data path hands these to the daemon's
    handshake worker, which applies its rate limits and cookies first."""

    datagram: bytes
    addr: object


class Handshake(NamedTuple):
    """A valid, authenticated INIT awaiting the daemon's decision. `token` is
    the responder's private handshake state: pass the tuple back unchanged."""

    peer_public: bytes
    payload: bytes
    addr: object
    token: object = None

    @property
    def timestamp(self) -> int:
        """The INIT's timestamp: what the daemon persists for this peer when it accepts,
        to hand back to the next Responder (see Responder's `timestamps`)."""
        return self.token.ts


class _Token:
    __slots__ = ("conn", "sender", "ts", "owner", "aead")

    def __init__(self, conn, sender, ts, owner, aead):
        self.conn = conn
        self.sender = sender
        self.ts = ts
        self.owner = owner
        self.aead = aead  # the transport AEAD follows the INIT's protocol name


class _Peer:
    __slots__ = ("public", "endpoint", "last_ts", "current", "next", "previous",
                 "previous_until", "unacked_since")

    def __init__(self, public: bytes, last_ts: int):
        self.public = public
        self.endpoint = None
        self.last_ts = last_ts
        self.current: Transport | None = None  # sends and receives
        self.next: Transport | None = None  # receives; sends once confirmed
        self.previous: Transport | None = None  # receives until previous_until
        self.previous_until = 0.0
        # First receive after our latest send; None = nothing to answer.
        self.unacked_since: float | None = None


class Responder:
    """Gateway side, many peers. Keys are switched only when the client's
    first datagram on the new one arrives: until then the client may not have
    the RESP (lost or late), so sending on the new key could black-hole.

    `timestamps`: peer key -> the latest INIT timestamp a previous run accepted
    (Handshake.timestamp, persisted by the daemon). An INIT not newer than it is a
    replay, answered by no run: replay protection survives restarts."""

    def __init__(self, static_private: bytes, timing: Timing = Timing(),
                 cipher: str = "chacha", timestamps: dict[bytes, int] | None = None,
                 lock: AbstractContextManager | None = None) -> None:
        cipher = resolve_cipher(cipher)
        self.public = public_key(static_private)
        # INITs of every protocol name are accepted (the initiator chooses the
        # cipher): `cipher` is only the one tried first. A wrong guess costs
        # one DH before the first AEAD fails, like any forged INIT.
        self._protocols = [PROTOCOLS[cipher]] + [v for k, v in PROTOCOLS.items() if k != cipher]
        self._static = bytes(static_private)
        # MAC1 is checked here, on the receive path; MAC2 and cookie replies by the daemon's worker
        self.cookies = CookieChecker(self.public)
        self.timing = timing
        self.stats = _new_stats()
        self._lock = lock if lock is not None else nullcontext()
        self._peers: dict[bytes, _Peer] = {}
        self._by_index: dict[int, tuple[_Peer, Transport]] = {}
        self._unaccepted_ts: dict[bytes, int] = {}
        # keys accepted once (this run or, restored, an earlier one) and not peers now:
        # never evicted, unlike _unaccepted_ts, or a spray of fresh keys would make their
        # old INITs new again; bounded by the daemon's address pool
        self._known_ts: dict[bytes, int] = dict(timestamps or {})
        self._hot = -1          # receive_groups: the index it last opened a current key's datagram with

    # -- receive -----------------------------------------------------------

    def receive_groups(self, groups, now: float) -> list:
        """receive() for each datagram of each (buffer, segment size, addr), in
        order (see _open_groups): (peer public, kind, payload) per transport
        datagram that opened, a run of chunks as one result with [payloads],
        a Handshake as it is. Buffers may be memoryviews: nothing keeps a
        reference to them. The key opened inline is the one the last call
        opened with, if still a peer's current one: a lone datagram (an idle
        ping) then skips receive() too (-35 us cold)."""
        fast = None
        entry = self._by_index.get(self._hot)
        if entry is not None:
            peer, t = entry
            if t is peer.current and now - t.created_at < self.timing.reject_after_s:
                fast = (t.local_index, t.open_body, t.opener(), peer.public, peer)
        by_index, receive = self._by_index, self.receive

        def slow(datagram, addr):
            res = receive(datagram, now, addr, defer=True)
            if res is None or type(res) is not tuple:
                return res, None
            # opened a transport datagram: open its key's next ones inline
            kind = res[1]
            if kind & 0xFF == DATA_CHUNK:
                res = (res[0], kind, [res[2]])
            entry = by_index.get(INDEX.unpack_from(datagram, 4)[0])
            if entry is not None and entry[1] is entry[0].current:
                peer, t = entry
                self._hot = t.local_index
                return res, (t.local_index, t.open_body, t.opener(), peer.public, peer)
            return res, _NO_KEY

        def seen(peer, addr):
            if peer.endpoint != addr:
                peer.endpoint = addr
            if peer.unacked_since is None:
                peer.unacked_since = now

        return _open_groups(groups, now, fast, slow, seen)

    def receive(self, datagram: bytes, now: float, addr,
                defer: bool = False) -> Handshake | Initiation | tuple[bytes, int, bytes] | None:
        """An opened transport datagram as (peer, kind, payload); an INIT as the
        Handshake to accept (after the key exchange), or with `defer` as the
        Initiation to pass to handshake() later (receive_groups defers)."""
        stats = self.stats
        if len(datagram) < 8:
            stats["malformed"] += 1
            return None
        kind = TYPE.unpack_from(datagram)[0]
        if kind == INIT:
            init = self.initiation(datagram, addr)
            return init if init is None or defer else self.handshake(init)
        if kind not in OPENABLE_KINDS:
            stats["malformed"] += 1
            return None
        entry = self._by_index.get(INDEX.unpack_from(datagram, 4)[0])
        if entry is None:
            stats["unknown_index"] += 1
            return None
        peer, t = entry
        if t is not peer.current:
            if t is peer.previous and now >= peer.previous_until:
                stats["expired"] += 1
                return None
        if now - t.created_at >= self.timing.reject_after_s:
            stats["expired"] += 1
            return None
        result = t.open(datagram)
        if result is None:
            return None
        if t is peer.next:
            with self._lock:
                if t is peer.next:
                    self._promote(peer, now)
        peer.endpoint = addr
        if peer.unacked_since is None:
            peer.unacked_since = now
        return peer.public, result[0], result[1]

    def initiation(self, datagram: bytes, addr) -> Initiation | None:
        """Cheap checks on an INIT (length, MAC1: one BLAKE2s, no key exchange);
        what fails them is dropped, counted and never answered."""
        if not INIT_MIN <= len(datagram) <= INIT_MAX:
            self.stats["malformed"] += 1
            return None
        if not self.cookies.check_mac1(datagram):
            self.stats["bad_mac1"] += 1
            return None
        return Initiation(datagram, addr)

    def handshake(self, init: Initiation) -> Handshake | None:
        """The key exchange on an Initiation: the Handshake to accept(), or None
        (not for us, stale or replayed: counted)."""
        datagram, addr = init
        stats = self.stats
        sender = INIT_HDR.unpack_from(datagram)[1]
        for protocol, aead in self._protocols:
            conn = _new_conn(protocol, self._static)
            conn.set_prologue(bytes(datagram[:INIT_HDR.size]))
            conn.set_as_responder()
            conn.start_handshake()
            try:
                payload = conn.read_message(bytes(datagram[INIT_HDR.size:len(datagram) - 2 * MAC_LEN]))
                peer_public = conn.noise_protocol.handshake_state.rs.public_bytes
                break
            except Exception:  # noise raises InvalidTag, ValueError, its own...
                continue
        else:
            stats["bad_mac"] += 1
            return None
        if len(payload) < TIMESTAMP.size:
            stats["malformed"] += 1
            return None
        ts = TIMESTAMP.unpack_from(payload)[0]
        with self._lock:
            peer = self._peers.get(peer_public)
            if peer is not None:
                last = peer.last_ts
            else:
                last = max(self._known_ts.get(peer_public, -1), self._unaccepted_ts.get(peer_public, -1))
            if ts <= last:
                stats["stale_handshake"] += 1
                return None
            if peer is not None:
                peer.last_ts = ts
            elif peer_public in self._known_ts:
                self._known_ts[peer_public] = ts
            else:
                seen = self._unaccepted_ts
                seen.pop(peer_public, None)
                seen[peer_public] = ts
                if len(seen) > _MAX_UNACCEPTED:
                    del seen[next(iter(seen))]
        return Handshake(peer_public, bytes(payload[TIMESTAMP.size:]), addr,
                         _Token(conn, sender, ts, self, aead))

    def accept(self, hs: Handshake, now: float, rand: bytes, payload: bytes) -> bytes:
        tok = hs.token
        if not isinstance(tok, _Token) or tok.owner is not self:
            raise SessionError("not a handshake from this responder")
        eph, index = _split_rand(rand)
        pub = hs.peer_public
        with self._lock:
            while index in self._by_index:
                index = (index + 1) & _INDEX_MASK
            try:
                _set_ephemeral(tok.conn, eph)
                msg = bytes(tok.conn.write_message(INDEX.pack(index) + bytes(payload)))
            except Exception as e:  # also: accepting the same handshake twice
                raise SessionError(f"cannot answer handshake: {e}") from None
            tok.owner = None
            send_key, recv_key = _transport_keys(tok.conn)
            t = Transport(send_key, recv_key, index, tok.sender, now, tok.aead, self.stats)
            peer = self._peers.get(pub)
            if peer is None:
                last = max(self._known_ts.pop(pub, -1), self._unaccepted_ts.pop(pub, -1), tok.ts)
                peer = self._peers[pub] = _Peer(pub, last)
            peer.last_ts = max(peer.last_ts, tok.ts)
            peer.endpoint = hs.addr
            self._drop(peer.next)
            cur = peer.current
            if cur is not None and now - cur.created_at < self.timing.reject_after_s:
                peer.next = t
            else:
                self._drop(cur)
                peer.current, peer.next = t, None
            self._by_index[index] = (peer, t)
            self.stats["handshakes"] += 1
        return RESP_HDR.pack(RESP, index, tok.sender) + msg

    def _promote(self, peer: _Peer, now: float) -> None:
        self._drop(peer.previous)
        peer.previous = peer.current
        peer.previous_until = now + self.timing.previous_keep_s
        peer.current, peer.next = peer.next, None

    def _drop(self, t: Transport | None) -> None:
        if t is not None:
            self._by_index.pop(t.local_index, None)

    # -- send --------------------------------------------------------------

    def _sendable(self, peer_public: bytes, now: float):
        peer = self._peers.get(peer_public)
        if peer is None:
            return None, None
        t = peer.current
        if t is None or now - t.created_at >= self.timing.reject_after_s:
            return peer, None
        return peer, t

    def seal(self, peer_public: bytes, kind: int, payload: bytes, now: float) -> bytes | None:
        peer, t = self._sendable(peer_public, now)
        if t is None:
            return None
        peer.unacked_since = None
        return t.seal(kind, payload)

    def seal_batch(self, peer_public: bytes, kind: int, payloads: list[bytes], now: float) -> list[bytes]:
        peer, t = self._sendable(peer_public, now)
        if t is None or not payloads:
            return []
        peer.unacked_since = None
        return t.seal_batch(kind, payloads)

    def endpoint(self, peer_public: bytes) -> object | None:
        peer = self._peers.get(peer_public)
        return None if peer is None else peer.endpoint

    def peers(self) -> list[bytes]:
        return list(self._peers)

    def activity(self, peer_public: bytes) -> tuple[int, int] | None:
        """(index, highest counter received) of the peer's current keys, None without:
        it changes only when a datagram from the peer authenticates, so comparing it
        between polls tells an active peer from an idle one at no per-packet cost."""
        peer = self._peers.get(peer_public)
        t = None if peer is None else peer.current
        return None if t is None else (t.local_index, t._replay.top)

    def forget(self, peer_public: bytes) -> None:
        """Drop a peer's keys. Its handshake timestamp is kept so that its old
        INITs stay replays."""
        with self._lock:
            peer = self._peers.pop(peer_public, None)
            if peer is None:
                return
            for t in (peer.current, peer.next, peer.previous):
                self._drop(t)
            self._known_ts[peer_public] = peer.last_ts

    # -- timers ------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When poll() has something to do next: the earliest timer of any peer
        (one pass over them). A datagram received later may start a peer's ack
        timer (unacked_since) earlier than this said: the caller bounds its sleep."""
        tm = self.timing
        times = []
        for peer in list(self._peers.values()):
            if peer.previous is not None:
                times.append(peer.previous_until)
            for t in (peer.next, peer.current):
                if t is not None:
                    times.append(t.created_at + tm.reject_after_s)
            if peer.unacked_since is not None and peer.endpoint is not None:
                times.append(peer.unacked_since + tm.ack_after_s)
        return min(times) if times else None

    def poll(self, now: float) -> list[tuple[object, bytes]]:
        out = []
        tm = self.timing
        with self._lock:
            for peer in list(self._peers.values()):
                if peer.previous is not None and now >= peer.previous_until:
                    self._drop(peer.previous)
                    peer.previous = None
                if peer.next is not None and now - peer.next.created_at >= tm.reject_after_s:
                    self._drop(peer.next)
                    peer.next = None
                t = peer.current
                if t is not None and now - t.created_at >= tm.reject_after_s:
                    self._drop(t)
                    peer.current = t = None
                if t is None and peer.next is not None:
                    # The old key died before the client confirmed the new
                    # one: the new one is all we have.
                    peer.current, peer.next = peer.next, None
                    t = peer.current
                since = peer.unacked_since
                if (t is not None and peer.endpoint is not None
                        and since is not None and now - since >= tm.ack_after_s):
                    peer.unacked_since = None
                    out.append((peer.endpoint, t.seal(KEEPALIVE, b"")))
        return out
