"""Signed gateway adverts: what a gateway sells, where, and proof of who says so.

An advert is canonical JSON (sorted keys, no spaces) signed with Ed25519. The
signing key is derived from the gateway's Noise static private key, so a
gateway has one identity to keep; the advert names both public keys. A
signature only proves that *someone* holding ``sign_key`` wrote the advert:
the binding between ``sign_key`` and ``noise_key`` is confirmed when the
gateway completes a Noise handshake under ``noise_key`` and announces its
``sign_key`` over the authenticated control channel (``AdvertBook.bind``).
Until then a candidate is unverified and carries no traffic; after it, an
advert for that Noise key signed by any other key is refused.

Replays are refused by sequence number (strictly increasing per pair of keys) and
expiry. Candidates are kept per (Noise key, signing key) pair: before the binding
is known, a stranger's advert naming someone else's Noise key (pointing at the
stranger's endpoint) sits beside the real one instead of shadowing it, and its
handshake never completes. Everything here is sans-IO: ``now`` is a parameter.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
from dataclasses import dataclass, field

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from tunnelgate.money import MAX_PRICE
from tunnelgate.packet import PacketError, parse_prefix

VERSION = 1
_DOMAIN = b"tunnelgate advert v1\0"
_KEY_DERIVATION = b"tunnelgate advert signing key v1"
MAX_ADVERT = 4096           # bytes of the signed encoding
MAX_ENDPOINTS = 8
MAX_PRICED = 64
MAX_METHODS = 8
MAX_LIFETIME_S = 86_400     # an advert may not claim to be good for longer than a day
MAX_CANDIDATES = 32


class AdvertError(ValueError):
    """An advert that is malformed, forged, replayed or expired. ``reason`` is the counter name."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


def signing_key(noise_private: bytes) -> SigningKey:
    """The Ed25519 key bound to a Noise static key (deterministic: no second key file)."""
    if len(noise_private) != 32:
        raise ValueError("a Noise static private key is 32 bytes")
    return SigningKey(hashlib.blake2b(noise_private, key=_KEY_DERIVATION, digest_size=32).digest())


def sign_public(noise_private: bytes) -> bytes:
    return bytes(signing_key(noise_private).verify_key)


@dataclass(frozen=True)
class Advert:
    noise_key: bytes                 # Noise static public key (32)
    sign_key: bytes                  # Ed25519 public key (32)
    endpoints: tuple[str, ...]       # "198.18.0.1:51820", "[2001:db8::1]:51820"
    price: int                       # default price, price units per KB (see money)
    prices: tuple[tuple[str, int], ...] = ()   # (prefix, price) overrides
    contract_kb: int = 0
    contract_s: int = 0
    grace_kb: int = 0
    grace_s: int = 0
    methods: tuple[str, ...] = ()    # "dummy", "cashu:<mint url>", "electrum", "bitcoind"
    seq: int = 0
    expires: int = 0                 # unix seconds
    label: str = ""
    # a reduced advert (what fits an mDNS announcement): priced prefixes left out; the whole
    # one, same seq, comes over the control channel (ADVERT_REQUEST) after the handshake
    more: bool = False

    def body(self) -> dict:
        body = {"v": VERSION, "noise": _b64(self.noise_key), "sign": _b64(self.sign_key),
                "ep": list(self.endpoints), "price": self.price,
                "prices": [[p, v] for p, v in self.prices],
                "ckb": self.contract_kb, "cs": self.contract_s, "gkb": self.grace_kb, "gs": self.grace_s,
                "pay": list(self.methods), "seq": self.seq, "exp": self.expires, "label": self.label}
        if self.more:       # only when set: a whole advert's encoding is as before the flag
            body["more"] = True
        return body

    def price_for(self, dest: str) -> int:
        """The advertised price for a destination address: the longest matching prefix wins."""
        addr = ipaddress.ip_address(dest)
        best, best_len = self.price, -1
        for prefix, price in self.prices:
            net = ipaddress.ip_network(prefix)
            if addr.version == net.version and addr in net and net.prefixlen > best_len:
                best, best_len = price, net.prefixlen
        return best


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def encode(advert: Advert, noise_private: bytes) -> bytes:
    """Sign and encode. Raises ValueError if the signer is not the advert's key or it is too big."""
    key = signing_key(noise_private)
    if bytes(key.verify_key) != advert.sign_key:
        raise ValueError("the advert's sign_key is not the one derived from this private key")
    body = _canonical(advert.body())
    sig = key.sign(_DOMAIN + body).signature
    out = _canonical({"b": advert.body(), "s": _b64(sig)})
    if len(out) > MAX_ADVERT:
        raise ValueError(f"advert is {len(out)} bytes, more than {MAX_ADVERT}: advertise fewer prefixes")
    return out


def _int(body: dict, key: str, hi: int) -> int:
    v = body.get(key)
    if type(v) is not int or not 0 <= v <= hi:
        raise AdvertError("malformed", f"field {key!r} must be an integer in 0..{hi}")
    return v


def _key(body: dict, name: str) -> bytes:
    try:
        raw = base64.b64decode(body[name], validate=True)
    except Exception:
        raise AdvertError("malformed", f"field {name!r} is not base64") from None
    if len(raw) != 32:
        raise AdvertError("malformed", f"field {name!r} is not a 32-byte key")
    return raw


def _endpoint(text) -> str:
    if type(text) is not str or len(text) > 64:
        raise AdvertError("malformed", "endpoint must be host:port text")
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
        ok = sep and port.isdigit() and 0 < int(port) < 65536
    except ValueError:
        ok = False
    if not ok:
        raise AdvertError("malformed", f"endpoint {text!r} is not ip:port")
    return text


def _strlist(body: dict, key: str, most: int, longest: int) -> tuple[str, ...]:
    v = body.get(key)
    if type(v) is not list or len(v) > most or any(type(s) is not str or len(s) > longest for s in v):
        raise AdvertError("malformed", f"field {key!r} must be a list of at most {most} strings")
    return tuple(v)


def decode(raw: bytes) -> Advert:
    """Parse and check the signature (not the binding, sequence or expiry: see AdvertBook)."""
    if len(raw) > MAX_ADVERT:
        raise AdvertError("malformed", f"advert over {MAX_ADVERT} bytes")
    try:
        outer = json.loads(raw)
        body, sig = outer["b"], base64.b64decode(outer["s"], validate=True)
        if type(body) is not dict or len(sig) != 64:
            raise ValueError
    except Exception:
        raise AdvertError("malformed", "not a signed advert") from None
    if body.get("v") != VERSION:
        raise AdvertError("malformed", f"advert version {body.get('v')!r}, this reads {VERSION}")
    sign_key = _key(body, "sign")
    try:
        VerifyKey(sign_key).verify(_DOMAIN + _canonical(body), sig)
    except (BadSignatureError, ValueError):
        raise AdvertError("bad_signature", "advert signature does not verify") from None
    prices = body.get("prices")
    if type(prices) is not list or len(prices) > MAX_PRICED:
        raise AdvertError("malformed", f"prices must be a list of at most {MAX_PRICED}")
    priced = []
    for item in prices:
        if type(item) is not list or len(item) != 2 or type(item[0]) is not str \
                or type(item[1]) is not int or not 0 <= item[1] <= MAX_PRICE:
            raise AdvertError("malformed", "a priced prefix is [prefix, price]")
        try:
            parse_prefix(item[0])
        except PacketError:
            raise AdvertError("malformed", f"{item[0]!r} is not a prefix") from None
        priced.append((item[0], item[1]))
    label = body.get("label", "")
    if type(label) is not str or len(label) > 64:
        raise AdvertError("malformed", "label must be text of at most 64 characters")
    more = body.get("more", False)
    if type(more) is not bool:
        raise AdvertError("malformed", "field 'more' must be true or false")
    return Advert(noise_key=_key(body, "noise"), sign_key=sign_key,
                  endpoints=tuple(_endpoint(e) for e in _strlist(body, "ep", MAX_ENDPOINTS, 64)),
                  price=_int(body, "price", MAX_PRICE), prices=tuple(priced),
                  contract_kb=_int(body, "ckb", 2**32 - 1), contract_s=_int(body, "cs", 2**32 - 1),
                  grace_kb=_int(body, "gkb", 2**32 - 1), grace_s=_int(body, "gs", 2**32 - 1),
                  methods=_strlist(body, "pay", MAX_METHODS, 256), seq=_int(body, "seq", 2**63 - 1),
                  expires=_int(body, "exp", 2**63 - 1), label=label, more=more)


def received(text: str | bytes, noise_key: bytes, sign_key: bytes) -> Advert:
    """The advert of an ADVERT control message (its ``advert`` text), from the gateway whose
    Noise handshake was with ``noise_key`` and announced ``sign_key``: decoded, signature
    checked, and both keys must be those (else ``wrong_key``). Sequence and expiry are the
    book's to judge (``AdvertBook.fetched``). Raises AdvertError."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    ad = decode(raw)
    if ad.noise_key != noise_key or ad.sign_key != sign_key:
        raise AdvertError("wrong_key", "advert over the control channel names other keys than the "
                                       "gateway's handshake")
    return ad


@dataclass
class Candidate:
    advert: Advert
    source: str              # where it came from: "config", or the sender's address
    seen: float              # `now` of the last accepted advert
    verified: bool = False   # the Noise key completed a handshake and announced this sign_key


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class AdvertBook:
    """The client's bounded set of advertised gateways, keyed by (Noise key, signing key).

    Bounded in every dimension a stranger controls: candidates (``max_candidates``),
    rate per source (``per_source_per_s``, burst ``burst``) and the table of sources.
    When full, an unverified candidate is displaced before a new one is refused, so a
    flood of self-signed adverts can churn only the unverified slots."""
    max_candidates: int = MAX_CANDIDATES
    per_source_per_s: float = 2.0
    burst: int = 8
    max_sources: int = 256
    candidates: dict[tuple[bytes, bytes], Candidate] = field(default_factory=dict)
    bound: dict[bytes, bytes] = field(default_factory=dict)       # noise key -> sign key, confirmed
    last_seq: dict[tuple[bytes, bytes], int] = field(default_factory=dict)  # survives displacement
    counts: dict[str, int] = field(default_factory=dict)
    _sources: dict[str, _Bucket] = field(default_factory=dict)

    def _count(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def _admit(self, source: str, now: float) -> bool:
        b = self._sources.get(source)
        if b is None:
            if len(self._sources) >= self.max_sources:
                # forget the sources that refilled longest ago; their buckets are full anyway
                for s in sorted(self._sources, key=lambda s: self._sources[s].at)[: self.max_sources // 4]:
                    del self._sources[s]
            b = self._sources[source] = _Bucket(float(self.burst), now)
        b.tokens = min(float(self.burst), b.tokens + (now - b.at) * self.per_source_per_s)
        b.at = now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True

    def offer(self, raw: bytes, source: str, now: float) -> Candidate | None:
        """Take one advert as received. Returns the candidate it updated, or None (counted)."""
        if not self._admit(source, now):
            self._count("rate_limited")
            return None
        try:
            ad = decode(raw)
        except AdvertError as e:
            self._count(e.reason)
            return None
        return self._take(ad, source, now)

    def _take(self, ad: Advert, source: str, now: float) -> Candidate | None:
        try:
            self._check(ad, now)
        except AdvertError as e:
            self._count(e.reason)
            return None
        pair = (ad.noise_key, ad.sign_key)
        cand = self.candidates.get(pair)
        if cand is None:
            if len(self.candidates) >= self.max_candidates and not self._make_room(now):
                self._count("too_many")
                return None
            cand = self.candidates[pair] = Candidate(ad, source, now)
        else:
            cand.advert, cand.seen, cand.source = ad, now, source
        cand.verified = self.bound.get(ad.noise_key) == ad.sign_key
        if len(self.last_seq) >= 4 * self.max_candidates:
            for k in [k for k in self.last_seq if k not in self.candidates][: self.max_candidates]:
                del self.last_seq[k]
        self.last_seq[pair] = ad.seq
        self._count("accepted")
        return cand

    def _check(self, ad: Advert, now: float) -> None:
        if ad.expires <= now:
            raise AdvertError("expired", "advert expired")
        if ad.expires > now + MAX_LIFETIME_S:
            raise AdvertError("expired", "advert claims a lifetime over a day")
        bound = self.bound.get(ad.noise_key)
        if bound is not None and bound != ad.sign_key:
            raise AdvertError("wrong_key", "advert signed by a key the gateway did not announce")
        pair = (ad.noise_key, ad.sign_key)
        last = self.last_seq.get(pair)
        if last is not None and ad.seq <= last and not (ad.seq == last and self._completes(pair, ad)):
            raise AdvertError("stale_seq", f"advert sequence {ad.seq} is not after {last}")

    def _completes(self, pair: tuple[bytes, bytes], ad: Advert) -> bool:
        """The whole advert of the reduced one held (same keys, same seq): the gateway signed
        both forms of one advert, the whole one only comes over the control channel."""
        cand = self.candidates.get(pair)
        return cand is not None and cand.advert.more and not ad.more and cand.advert.seq == ad.seq

    def _make_room(self, now: float) -> bool:
        expired = [k for k, c in self.candidates.items() if c.advert.expires <= now]
        if expired:
            for k in expired:
                del self.candidates[k]
            return True
        unverified = [k for k, c in self.candidates.items() if not c.verified]
        if not unverified:
            return False
        del self.candidates[min(unverified, key=lambda k: self.candidates[k].seen)]
        return True

    def bind(self, noise_key: bytes, sign_key: bytes) -> bool:
        """The gateway with this Noise key announced ``sign_key`` after a completed handshake.
        Returns whether an advert of it is now verified; candidates for that Noise key
        signed by another key are dropped (someone else's adverts for it)."""
        self.bound[noise_key] = sign_key
        for pair in [p for p in self.candidates if p[0] == noise_key and p[1] != sign_key]:
            del self.candidates[pair]
            self._count("wrong_key")
        cand = self.candidates.get((noise_key, sign_key))
        if cand is None:
            return False
        cand.verified = True
        return True

    def fetched(self, raw: str | bytes, noise_key: bytes, sign_key: bytes, now: float) -> Candidate | None:
        """An advert the gateway sent as ADVERT on the control channel of a completed
        handshake with ``noise_key``, whose handshake announced ``sign_key``: it must name
        both keys (else counted ``wrong_key``); the pair is bound, then the advert is taken
        as ``offer`` takes one, without the per-source rate limit (the channel is
        authenticated and the client asked). Returns the candidate, verified, or None."""
        try:
            ad = received(raw, noise_key, sign_key)
        except AdvertError as e:
            self._count(e.reason)
            return None
        self.bind(noise_key, sign_key)
        cand = self.candidates.get((noise_key, sign_key))
        return self._take(ad, cand.source if cand is not None else "control", now)

    def verified(self) -> list[Candidate]:
        return [c for c in self.candidates.values() if c.verified]

    def expire(self, now: float) -> list[tuple[bytes, bytes]]:
        gone = [k for k, c in self.candidates.items() if c.advert.expires <= now]
        for k in gone:
            del self.candidates[k]
        return gone

    def next_deadline(self) -> float | None:
        return min((c.advert.expires for c in self.candidates.values()), default=None)
