"""Exact money: integers only, never floats.

Units
-----
* Amounts are integers in **millisatoshi** (msat).
* Prices are integers in **micro-msat per KB** (1 KB = 1000 bytes), i.e.
  ``PRICE_SCALE = 1_000_000`` price units make 1 msat/KB.  A real price of
  0.25 msat/KB is the integer 250_000.  (1 price unit = 1e-6 msat = 1e-9 sat
  per KB, a "pico-sat" per KB.)  Config strings carry msat/KB in decimal
  ("0.25"); more than 6 decimals is rejected, not rounded.

A contract's cost is ``ceil(price * limit_kb / PRICE_SCALE)`` msat: the exact
product is kept in price units and rounded up once, when it is paid.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

PRICE_SCALE = 1_000_000          # price units per (msat/KB)
PRICE_DECIMALS = 6
MAX_PRICE = 10**15               # 1e9 msat/KB: sanity bound for parsing and the wire
MAX_MSAT = 21 * 10**6 * 10**8 * 1000   # all bitcoin, in msat
BYTES_PER_KB = 1000


class MoneyError(ValueError):
    """A price or amount that cannot be represented exactly."""


def _decimal(value: object, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal)):
        raise MoneyError(f"{what}: expected a decimal string or an integer, got {value!r}"
                         " (floats are not accepted: write the price in quotes)")
    if isinstance(value, int):
        return Decimal(value)
    try:
        d = Decimal(value.strip()) if isinstance(value, str) else value
    except InvalidOperation:
        raise MoneyError(f"{what}: not a decimal number: {value!r}") from None
    if not d.is_finite():
        raise MoneyError(f"{what}: not a finite number: {value!r}")
    return d


def parse_price(value: object) -> int:
    """msat/KB as a decimal string or int ("0.25", 1) -> price units (int)."""
    d = _decimal(value, "price")
    if d < 0:
        raise MoneyError(f"price: must not be negative, got {value!r}")
    scaled = d * PRICE_SCALE
    if scaled != scaled.to_integral_value():
        raise MoneyError(f"price: {value!r} has more than {PRICE_DECIMALS} decimals of msat/KB;"
                         " the smallest price step is 0.000001 msat/KB")
    units = int(scaled)
    if units > MAX_PRICE:
        raise MoneyError(f"price: {value!r} msat/KB is implausibly high")
    return units


def parse_msat(value: object) -> int:
    """An amount in msat (integer, or a string of an integer; "12 sat" / "12sat" also accepted)."""
    if isinstance(value, str):
        text = value.strip().lower()
        mult = 1
        if text.endswith("msat"):
            text = text[:-4].strip()
        elif text.endswith("sat"):
            text, mult = text[:-3].strip(), 1000
        d = _decimal(text, "amount") * mult
    else:
        d = _decimal(value, "amount")
    if d < 0:
        raise MoneyError(f"amount: must not be negative, got {value!r}")
    if d != d.to_integral_value():
        raise MoneyError(f"amount: {value!r} is not a whole number of msat")
    if d > MAX_MSAT:
        raise MoneyError(f"amount: {value!r} is more than all bitcoin")
    return int(d)


def cost_msat(price: int, limit_kb: int) -> int:
    """What a contract of ``limit_kb`` at ``price`` (price units) costs, rounded up to a msat."""
    return -((-price * limit_kb) // PRICE_SCALE)


def parse_fraction(value: object, what: str = "fraction") -> tuple[int, int]:
    """"0.8" -> (8, 10): an exact ratio in [0, 1] for counter offers and tolerances."""
    d = _decimal(value, what)
    if d < 0:
        raise MoneyError(f"{what}: must not be negative, got {value!r}")
    num, den = d.as_integer_ratio()
    return num, den


def format_price(price: int) -> str:
    """Price units -> "0.25 msat/KB"."""
    whole, frac = divmod(price, PRICE_SCALE)
    if frac:
        return f"{whole}.{frac:06d}".rstrip("0") + " msat/KB"
    return f"{whole} msat/KB"


def format_msat(msat: int) -> str:
    """1234567 -> "1,234.567 sat"; small amounts stay in msat."""
    if msat < 1000 and msat > -1000:
        return f"{msat} msat"
    sign = "-" if msat < 0 else ""
    sat, m = divmod(abs(msat), 1000)
    return f"{sign}{sat:,}.{m:03d} sat" if m else f"{sign}{sat:,} sat"
