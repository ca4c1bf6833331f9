"""The cost chain of a contract: who is paid what along the way to the destination.

A seller that resells (a relay) buys upstream and adds its margin; its PROPOSE (and QUOTE)
carries the chain of hops, each ``(public key, price per KB it charges its own buyer)``,
outermost (the gateway with the uplink) first and the proposing seller last.  A plain
gateway's chain is one hop, itself.  The buyer checks it against the proposal before
accepting (``problem``) and keeps it with the contract (``Terms.chain``), so what it pays for
is visible instead of hidden behind the relay nearest to it.

A chain is the sellers' own account: a relay could still lie about its upstream (nothing
here is signed), but it cannot make the numbers fail to add up unnoticed, nor put the buyer
itself or one key twice in the path (a loop).  Prices are price units (money.py)."""

from __future__ import annotations

import base64

from tunnelgate.money import format_price

MAX_HOPS = 8                  # a path longer than this is refused on the wire and by the buyer
KEY_BYTES = 32

Hop = tuple[bytes, int]       # (public key, price per KB that hop charges its buyer)


def extend(upstream: tuple[Hop, ...], own_key: bytes, price: int) -> tuple[Hop, ...]:
    """The chain a seller proposes: what it bought upstream (empty: its own uplink), then itself
    at the price it asks."""
    return tuple(upstream) + ((own_key, price),)


def problem(chain: tuple[Hop, ...], price: int, seller: bytes, own_key: bytes = b"") -> str:
    """Why a proposal's chain does not add up ("" when it does): the last hop must be the
    seller proposing, at the price proposed; no key twice; never the buyer itself (a loop
    through us); at most MAX_HOPS."""
    if not chain:
        return "the proposal carries an empty cost chain"
    if len(chain) > MAX_HOPS:
        return f"cost chain of {len(chain)} hops, more than {MAX_HOPS}"
    last_key, last_price = chain[-1]
    if last_key != seller:
        return f"cost chain ends at {short(last_key)}, not at the seller {short(seller)} proposing"
    if last_price != price:
        return (f"cost chain's last hop asks {format_price(last_price)}, the proposal "
                f"{format_price(price)}")
    keys = [k for k, _ in chain]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        return f"cost chain lists {short(dup)} twice (a loop)"
    if own_key and own_key in keys:
        return "cost chain passes through this node itself (a loop)"
    return ""


def implied(seller: bytes, price: int) -> tuple[Hop, ...]:
    """The chain of a seller that sent none (from before chains): itself, one hop."""
    return ((seller, price),)


def short(key: bytes) -> str:
    return b64(key)[:12] + "…"


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def parse_key(text: str) -> bytes | None:
    """Strict base64 of a KEY_BYTES public key (canonical form only), or None."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        return None
    return raw if len(raw) == KEY_BYTES and b64(raw) == text else None


def view(chain: tuple[Hop, ...]) -> list[dict]:
    """As `contracts`, `status` and `quote --json` show it."""
    return [{"public_key": b64(k), "price_per_kb": p} for k, p in chain]
