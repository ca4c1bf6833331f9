"""MAC1, MAC2 and the cookie reply on a handshake initiation: WireGuard's
defence against handshake floods (whitepaper section 5.4.4-5.4.7, wireguard-go
device/cookie.go), adapted to this handshake. docs/protocol.md is the overview.

Every INIT ends in two 16-byte MACs (keyed BLAKE2s-128):

  mac1 = MAC(BLAKE2s-256("mac1----" || gateway public key), INIT up to mac1)
  mac2 = MAC(cookie, INIT up to mac2)          (zeros when the client has no cookie)

MAC1 proves the sender knows the gateway's public key, so random datagrams
cost one BLAKE2s and get no answer, never a Diffie-Hellman. Under load, the
gateway also wants MAC2: a cookie only the owner of the source address and
port can know,

  cookie = MAC(secret, source address || port)    (secret: 32 random bytes, replaced every 2 minutes)

so a spoofed source cannot make it do DH work. An INIT with a valid MAC1 and
no valid MAC2 is answered, under load only, by a COOKIE reply:

  type=8 u32 | receiver_index u32 (the INIT's sender index) | nonce 24 | AEAD(cookie) 32

AEAD = XChaCha20-Poly1305 in WireGuard; `cryptography` has no XChaCha, so
here: ChaCha20-Poly1305 under the subkey BLAKE2s-256(key = cookie key,
message = the 24-byte random nonce), with a zero 12-byte nonce. Each reply
has its own subkey, so random nonces are as safe as XChaCha's; the
associated data is the INIT's MAC1 (only the client that sent that INIT
takes the cookie); cookie key = BLAKE2s-256("cookie--" || gateway public key).

Sans-IO: `now` (monotonic seconds) and random bytes are arguments; source
addresses come in as bytes (`source_bytes`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .wire import COOKIE, COOKIE_LEN, INDEX, INIT_HDR, MAC_LEN, TYPE

LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
SECRET_S = 120.0        # the gateway's secret is replaced after this long ...
COOKIE_S = 120.0        # ... and a client uses a cookie for at most this long (both as WireGuard)
NONCE_LEN = 24
SECRET_LEN = 32
REPLY_RAND = NONCE_LEN + SECRET_LEN     # random bytes CookieChecker.reply takes
_ZERO_NONCE = bytes(12)
_NO_MAC = bytes(MAC_LEN)


def _mac(key: bytes, data) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=MAC_LEN).digest()


def _keys(public: bytes) -> tuple[bytes, bytes]:
    return (hashlib.blake2s(LABEL_MAC1 + public).digest(),
            hashlib.blake2s(LABEL_COOKIE + public).digest())


def _aead(cookie_key: bytes, nonce: bytes) -> ChaCha20Poly1305:
    return ChaCha20Poly1305(hashlib.blake2s(nonce, key=cookie_key).digest())


def source_bytes(addr) -> bytes:
    """What a cookie is bound to: the packed IP address and the big-endian port of a
    socket address tuple (IPv4 or IPv6)."""
    return ipaddress.ip_address(addr[0]).packed + int(addr[1]).to_bytes(2, "big")


class CookieChecker:
    """The gateway's side. Not locked: one thread (the handshake worker) calls
    check_mac2 and reply; check_mac1 reads only constants, from any thread."""

    def __init__(self, public: bytes) -> None:
        self._mac1_key, self._cookie_key = _keys(public)
        self._secret: bytes | None = None
        self._secret_at = 0.0

    def check_mac1(self, datagram) -> bool:
        """The INIT's MAC1 is right (the sender knows our public key)."""
        end = len(datagram) - MAC_LEN
        return hmac.compare_digest(_mac(self._mac1_key, datagram[:end - MAC_LEN]), datagram[end - MAC_LEN:end])

    def _cookie(self, src: bytes, now: float) -> bytes | None:
        if self._secret is None or now - self._secret_at >= SECRET_S:
            return None
        return _mac(self._secret, src)

    def check_mac2(self, datagram, src: bytes, now: float) -> bool:
        """The INIT's MAC2 is keyed with the cookie of `src` under the current secret."""
        cookie = self._cookie(src, now)
        if cookie is None:
            return False
        end = len(datagram) - MAC_LEN
        return hmac.compare_digest(_mac(cookie, datagram[:end]), datagram[end:])

    def reply(self, datagram, src: bytes, now: float, rand: bytes) -> bytes:
        """The COOKIE reply to an INIT (whose MAC1 the caller checked) from `src`.
        rand: REPLY_RAND random bytes (the nonce, then a fresh secret if the old one expired)."""
        if len(rand) != REPLY_RAND:
            raise ValueError(f"rand must be {REPLY_RAND} bytes, got {len(rand)}")
        cookie = self._cookie(src, now)
        if cookie is None:
            self._secret, self._secret_at = bytes(rand[NONCE_LEN:]), now
            cookie = _mac(self._secret, src)
        nonce = bytes(rand[:NONCE_LEN])
        end = len(datagram) - MAC_LEN
        sealed = _aead(self._cookie_key, nonce).encrypt(_ZERO_NONCE, cookie, bytes(datagram[end - MAC_LEN:end]))
        return TYPE.pack(COOKIE) + bytes(datagram[4:8]) + nonce + sealed


class CookieJar:
    """The client's side: adds the MACs to its INITs and keeps the latest cookie
    a COOKIE reply gave it."""

    def __init__(self, gateway_public: bytes) -> None:
        self._mac1_key, self._cookie_key = _keys(gateway_public)
        self._last_mac1: bytes | None = None
        self._last_index: int | None = None
        self._cookie: bytes | None = None
        self._cookie_at = 0.0

    def add_macs(self, init: bytes, now: float) -> bytes:
        """init (header and Noise message) followed by MAC1 and MAC2 (zeros without a live cookie)."""
        mac1 = _mac(self._mac1_key, init)
        self._last_mac1, self._last_index = mac1, INIT_HDR.unpack_from(init)[1]
        out = init + mac1
        if self._cookie is not None and now - self._cookie_at < COOKIE_S:
            return out + _mac(self._cookie, out)
        return out + _NO_MAC

    def consume(self, reply, now: float) -> bool:
        """Take the cookie from a COOKIE reply to our latest INIT; False (and
        nothing kept) for anything else."""
        if len(reply) != COOKIE_LEN or self._last_mac1 is None:
            return False
        if INDEX.unpack_from(reply, 4)[0] != self._last_index:
            return False
        nonce = bytes(reply[8:8 + NONCE_LEN])
        try:
            cookie = _aead(self._cookie_key, nonce).decrypt(_ZERO_NONCE, bytes(reply[8 + NONCE_LEN:]), self._last_mac1)
        except InvalidTag:
            return False
        self._cookie, self._cookie_at = cookie, now
        return True


def needs_cookie(checker: CookieChecker, datagram, src: bytes, now: float, under_load: bool) -> bool:
    """Whether an INIT (valid MAC1) must be answered with a COOKIE reply rather
    than a handshake: only under load, and only without a valid MAC2."""
    return under_load and not checker.check_mac2(datagram, src, now)
