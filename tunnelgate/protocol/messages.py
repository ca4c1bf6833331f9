"""Wire format of the contract control messages.

Encoding: one compact UTF-8 JSON object per message, ``{"t": TYPE, field: value, ...}``,
at most ``MAX_MESSAGE`` bytes.  The decoder is strict: every type has a schema
(field -> kind, required/optional), unknown types and unknown or missing fields,
floats, NaN, duplicate keys, bools where ints are expected, out-of-range ints and
over-long strings are all rejected with ``ProtocolError`` -- the only exception it
raises.

Units on the wire: prices in price units (micro-msat per KB, see ``money``),
amounts in msat, data in KB (1 KB = 1000 bytes), bytes in bytes, durations in
whole seconds *relative to acceptance* (no clock synchronisation needed: each side
starts the contract clock when it sends / receives ACCEPT or activates the contract).
Destinations are prefixes in text, "198.18.2.7/32" or "198.18.2.0/24".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import ClassVar

from tunnelgate.money import MAX_MSAT, MAX_PRICE
from tunnelgate.protocol.advert import MAX_ADVERT
from tunnelgate.packet import PacketError, parse_prefix
from tunnelgate.protocol.chain import MAX_HOPS, b64, parse_key

# the control channel's payload bound (channel.MAX_PAYLOAD): an ADVERT carries a signed advert
# of up to advert.MAX_ADVERT (4096) bytes as a JSON string, whose quotes are escaped on the way
MAX_MESSAGE = 8192
MAX_ID = 64
MAX_TEXT = 256
MAX_PROOF = 3000
# an account is a bolt11 invoice for the electrum backend: ~450 characters with a route hint
# and a fallback address
MAX_ACCOUNT = 1024
MAX_U32 = 2**32 - 1
MAX_U64 = 2**64 - 1


class ProtocolError(Exception):
    """A control message or frame that is malformed or not allowed here."""


# field kinds: (validator name, bound)
_ID = ("id", MAX_ID)
_TEXT = ("text", MAX_TEXT)
_PROOF = ("text", MAX_PROOF)
_ACCOUNT = ("text", MAX_ACCOUNT)
_DEST = ("dest", 64)
_PRICE = ("int", MAX_PRICE)
_MSAT = ("int", MAX_MSAT)
_KB = ("int", MAX_U32)
_SECS = ("int", MAX_U32)
_BYTES = ("int", MAX_U64)
_ROUND = ("int", 255)
_BOOL = ("bool", None)
_METHODS = ("strlist", 16)
MAX_USAGE_ITEMS = 32     # worst case (64-char ids, u64 counters) still fits MAX_MESSAGE
_USAGE_ITEMS = ("usage", MAX_USAGE_ITEMS)
_ADVERT = ("text", MAX_ADVERT)
# the cost chain (protocol/chain.py): 1..MAX_HOPS of {"public_key": base64, "price_per_kb": int},
# outermost first; in a Message, a tuple of (key bytes, price) pairs
_CHAIN = ("chain", MAX_HOPS)
_HOP_FIELDS = frozenset({"public_key", "price_per_kb"})


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""
    SCHEMA: ClassVar[dict] = {}       # field -> kind
    OPTIONAL: ClassVar[frozenset] = frozenset()


@dataclass(frozen=True)
class Propose(Message):
    """Gateway -> client: terms for one contract (a new id every round).  ``chain``: the cost
    chain, the proposing seller last at ``price`` (absent: a seller from before chains)."""
    TYPE = "PROPOSE"
    SCHEMA = {"contract_id": _ID, "destination": _DEST, "price": _PRICE, "limit_kb": _KB,
              "time_s": _SECS, "methods": _METHODS, "account": _ACCOUNT, "round": _ROUND,
              "grace_s": _SECS, "grace_kb": _KB, "chain": _CHAIN}
    OPTIONAL = frozenset({"chain"})
    contract_id: str
    destination: str
    price: int
    limit_kb: int
    time_s: int
    methods: tuple[str, ...]
    account: str
    round: int = 1
    grace_s: int = 0
    grace_kb: int = 0
    chain: tuple[tuple[bytes, int], ...] | None = None


@dataclass(frozen=True)
class Accept(Message):
    """Client -> gateway: yes.  ``credit`` true: "pay this contract from my prepaid credit";
    the gateway answers PAID (credit taken) or PAYMENT_FAILED (not enough credit: pay with PAY)."""
    TYPE = "ACCEPT"
    SCHEMA = {"contract_id": _ID, "credit": _BOOL}
    OPTIONAL = frozenset({"credit"})
    contract_id: str
    credit: bool | None = None


@dataclass(frozen=True)
class Reject(Message):
    """Client -> gateway: no to a proposal, with an optional counter-offer.
    No counter at all means "no deal at any terms" (e.g. budget)."""
    TYPE = "REJECT"
    SCHEMA = {"contract_id": _ID, "reason": _TEXT, "price": _PRICE, "limit_kb": _KB, "time_s": _SECS}
    OPTIONAL = frozenset({"price", "limit_kb", "time_s"})
    contract_id: str
    reason: str
    price: int | None = None
    limit_kb: int | None = None
    time_s: int | None = None


@dataclass(frozen=True)
class Request(Message):
    """Client -> gateway: quote request for a destination (renewal); answered by PROPOSE or NO_DEAL.
    ``limit_kb``: the data limit the client would like (a fast flow asks for more than the
    gateway's default); the gateway proposes it within its own bounds. Sent only to a gateway
    whose handshake listed the "sized" feature."""
    TYPE = "REQUEST"
    SCHEMA = {"destination": _DEST, "limit_kb": _KB}
    OPTIONAL = frozenset({"limit_kb"})
    destination: str
    limit_kb: int | None = None


@dataclass(frozen=True)
class Pay(Message):
    """Client -> gateway: a proof for a contract.  ``amount_msat`` may exceed the contract's
    cost (prepaid credit): what the proof is worth beyond the cost is credited to the peer."""
    TYPE = "PAY"
    SCHEMA = {"contract_id": _ID, "amount_msat": _MSAT, "method": _TEXT, "proof": _PROOF}
    contract_id: str
    amount_msat: int
    method: str
    proof: str


@dataclass(frozen=True)
class Paid(Message):
    """Gateway -> client: the contract is paid.  ``credit_msat``: the peer's prepaid credit
    left at the gateway after this contract (absent: not known / unchanged)."""
    TYPE = "PAID"
    SCHEMA = {"contract_id": _ID, "credit_msat": _MSAT}
    OPTIONAL = frozenset({"credit_msat"})
    contract_id: str
    credit_msat: int | None = None


@dataclass(frozen=True)
class PaymentFailed(Message):
    TYPE = "PAYMENT_FAILED"
    SCHEMA = {"contract_id": _ID, "reason": _TEXT}
    contract_id: str
    reason: str


@dataclass(frozen=True)
class Revoke(Message):
    TYPE = "REVOKE"
    SCHEMA = {"contract_id": _ID, "reason": _TEXT}
    contract_id: str
    reason: str


@dataclass(frozen=True)
class Usage(Message):
    """Gateway -> client: cumulative metered bytes (authoritative) of one or more of the
    peer's contracts, as ``items`` of ``(contract_id, up, down, final)``; ``final`` is set
    once the contract has ended on the gateway.  The gateway sends at most one USAGE per
    peer per usage interval with every contract whose count moved (split in messages of at
    most ``MAX_USAGE_ITEMS``), and a final one as soon as a contract ends."""
    TYPE = "USAGE"
    SCHEMA = {"items": _USAGE_ITEMS}
    items: tuple[tuple[str, int, int, bool], ...]

    @classmethod
    def one(cls, contract_id: str, up: int, down: int, final: bool = False) -> "Usage":
        return cls(((contract_id, up, down, final),))


@dataclass(frozen=True)
class UsageRequest(Message):
    TYPE = "USAGE_REQUEST"
    SCHEMA = {"contract_id": _ID}
    contract_id: str


@dataclass(frozen=True)
class NoDeal(Message):
    """Gateway -> client: final refusal for a destination; do not ask again for retry_after_s."""
    TYPE = "NO_DEAL"
    SCHEMA = {"contract_id": _ID, "destination": _DEST, "reason": _TEXT, "retry_after_s": _SECS}
    OPTIONAL = frozenset({"contract_id"})
    destination: str
    reason: str
    retry_after_s: int
    contract_id: str | None = None


@dataclass(frozen=True)
class QuoteRequest(Message):
    """Client -> gateway: what would a contract for this destination cost now?  Nothing is
    bought and no state changes; answered by exactly one QUOTE, in order."""
    TYPE = "QUOTE_REQUEST"
    SCHEMA = {"destination": _DEST}
    destination: str


@dataclass(frozen=True)
class Quote(Message):
    """Gateway -> client: the terms a proposal for this destination (masked to the gateway's
    scope) would carry now; ``reason`` says why none would be made (free, no-deal back-off, a
    relay's upstream price not known yet); ``chain`` as in PROPOSE; ``retry_after_s``: a
    REQUEST for it now would get NO_DEAL (a no-deal back-off, a relay without upstream for
    it), and may succeed after that many seconds."""
    TYPE = "QUOTE"
    SCHEMA = {"destination": _DEST, "price": _PRICE, "limit_kb": _KB, "time_s": _SECS,
              "methods": _METHODS, "grace_s": _SECS, "grace_kb": _KB, "reason": _TEXT, "chain": _CHAIN,
              "retry_after_s": _SECS}
    OPTIONAL = frozenset({"reason", "chain", "retry_after_s"})
    destination: str
    price: int
    limit_kb: int
    time_s: int
    methods: tuple[str, ...]
    grace_s: int
    grace_kb: int
    reason: str | None = None
    chain: tuple[tuple[bytes, int], ...] | None = None
    retry_after_s: int | None = None


@dataclass(frozen=True)
class AdvertRequest(Message):
    """Client -> gateway: send your whole signed advert (an mDNS announcement may carry a
    reduced one). Answered by ADVERT, at most a few times per peer per minute."""
    TYPE = "ADVERT_REQUEST"
    SCHEMA = {}


@dataclass(frozen=True)
class AdvertMessage(Message):
    """Gateway -> client: its signed advert (protocol/advert.py encoding, ASCII JSON, as
    text); ``advert.AdvertBook.fetched`` takes it with the session's keys."""
    TYPE = "ADVERT"
    SCHEMA = {"advert": _ADVERT}
    advert: str


TYPES: dict[str, type[Message]] = {c.TYPE: c for c in
                                   (Propose, Accept, Reject, Request, Pay, Paid, PaymentFailed,
                                    Revoke, Usage, UsageRequest, NoDeal, QuoteRequest, Quote,
                                    AdvertRequest, AdvertMessage)}


def _check(cls: type[Message], name: str, kind: tuple, value: object) -> object:
    k, bound = kind
    if k == "int":
        if type(value) is not int or value < 0 or value > bound:
            raise ProtocolError(f"{cls.TYPE}.{name}: expected an integer 0..{bound}")
        return value
    if k == "bool":
        if type(value) is not bool:
            raise ProtocolError(f"{cls.TYPE}.{name}: expected true/false")
        return value
    if k in ("text", "id"):
        if type(value) is not str or len(value) > bound:
            raise ProtocolError(f"{cls.TYPE}.{name}: expected a string of at most {bound} characters")
        if k == "id" and (not value or not value.isascii() or not value.isprintable()):
            raise ProtocolError(f"{cls.TYPE}.{name}: expected a non-empty printable ASCII id")
        return value
    if k == "dest":
        if type(value) is not str or len(value) > bound:
            raise ProtocolError(f"{cls.TYPE}.{name}: expected a prefix string")
        try:
            parse_prefix(value)
        except PacketError as e:
            raise ProtocolError(f"{cls.TYPE}.{name}: {e}") from None
        return value
    if k == "usage":
        if type(value) not in (list, tuple) or not 0 < len(value) <= bound:
            raise ProtocolError(f"{cls.TYPE}.{name}: expected a list of 1..{bound} usage items")
        items = []
        for it in value:
            if type(it) not in (list, tuple) or len(it) != 4:
                raise ProtocolError(f"{cls.TYPE}.{name}: expected items [contract_id, up, down, final]")
            items.append((_check(cls, name + ".contract_id", _ID, it[0]), _check(cls, name + ".up", _BYTES, it[1]),
                          _check(cls, name + ".down", _BYTES, it[2]), _check(cls, name + ".final", _BOOL, it[3])))
        return tuple(items)
    if k == "chain":
        return _check_chain(cls, name, bound, value)
    if k == "strlist":
        if type(value) not in (list, tuple) or len(value) > bound or any(
                type(s) is not str or not s or len(s) > MAX_ID for s in value):
            raise ProtocolError(f"{cls.TYPE}.{name}: expected a list of at most {bound} short strings")
        return tuple(value)
    raise AssertionError(k)


def _check_chain(cls: type[Message], name: str, bound: int, value: object) -> tuple:
    if type(value) not in (list, tuple) or not 0 < len(value) <= bound:
        raise ProtocolError(f"{cls.TYPE}.{name}: expected a list of 1..{bound} hops")
    hops = []
    for hop in value:
        if type(hop) is not dict or set(hop) != _HOP_FIELDS:
            raise ProtocolError(f"{cls.TYPE}.{name}: expected hops {{public_key, price_per_kb}}")
        key = parse_key(hop["public_key"]) if type(hop["public_key"]) is str else None
        if key is None:
            raise ProtocolError(f"{cls.TYPE}.{name}.public_key: expected a 32-byte key in base64")
        hops.append((key, _check(cls, name + ".price_per_kb", _PRICE, hop["price_per_kb"])))
    return tuple(hops)


def _wire(kind: tuple, v: object) -> object:
    """A message field in its JSON form."""
    if kind[0] == "chain":
        return [{"public_key": b64(k), "price_per_kb": p} for k, p in v]
    if isinstance(v, tuple):
        return [list(x) if isinstance(x, tuple) else x for x in v]
    return v


def _validate(cls: type[Message], data: dict) -> dict:
    out = {}
    for name, kind in cls.SCHEMA.items():
        if name not in data:
            if name in cls.OPTIONAL:
                continue
            raise ProtocolError(f"{cls.TYPE}: missing field {name!r}")
        value = data[name]
        if value is None and name in cls.OPTIONAL:
            continue
        out[name] = _check(cls, name, kind, value)
    extra = set(data) - set(cls.SCHEMA)
    if extra:
        raise ProtocolError(f"{cls.TYPE}: unknown field {sorted(extra)[0]!r}")
    return out


def encode(msg: Message) -> bytes:
    cls = type(msg)
    if cls not in TYPES.values():
        raise ProtocolError(f"not a message: {msg!r}")
    data = {}
    for f in fields(msg):
        v = getattr(msg, f.name)
        if v is None and f.name in cls.OPTIONAL:
            continue
        data[f.name] = _wire(cls.SCHEMA[f.name], v)
    _validate(cls, data)        # never put on the wire what the peer would refuse
    raw = json.dumps({"t": cls.TYPE, **data}, separators=(",", ":"), ensure_ascii=True).encode()
    if len(raw) > MAX_MESSAGE:
        raise ProtocolError(f"{cls.TYPE}: encoded message is {len(raw)} bytes, max {MAX_MESSAGE}")
    return raw


def _no_floats(_s: str):
    raise ValueError("floats are not allowed")


def _no_constants(_s: str):
    raise ValueError("NaN/Infinity are not allowed")


def _pairs(pairs: list) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError("duplicate key")
    return d


def decode(raw: bytes) -> Message:
    """bytes -> Message; raises only ProtocolError."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise ProtocolError("message must be bytes")
    if len(raw) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE}")
    try:
        text = bytes(raw).decode("utf-8")
        obj = json.loads(text, parse_float=_no_floats, parse_constant=_no_constants,
                         object_pairs_hook=_pairs)
    except (ValueError, RecursionError, MemoryError, TypeError) as e:
        raise ProtocolError(f"not a valid message: {e.__class__.__name__}") from None
    if type(obj) is not dict:
        raise ProtocolError("message must be a JSON object")
    t = obj.pop("t", None)
    cls = TYPES.get(t) if type(t) is str else None
    if cls is None:
        raise ProtocolError(f"unknown message type {t!r}"[:120])
    return cls(**_validate(cls, obj))
