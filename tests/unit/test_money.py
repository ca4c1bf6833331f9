import io
import pathlib
import tokenize
import re

import pytest

from tunnelgate.money import (MoneyError, cost_msat, format_msat, format_price, parse_fraction,
                              parse_msat, parse_price)


def test_parse_price_exact():
    assert parse_price("0.25") == 250_000
    assert parse_price("0.05") == 50_000
    assert parse_price(1) == 1_000_000
    assert parse_price("0.000001") == 1
    assert parse_price(" 1.5 ") == 1_500_000


@pytest.mark.parametrize("bad", ["0.0000001", "-1", "abc", "NaN", "inf", 0.25, True, None, "1e30"])
def test_parse_price_rejects(bad):
    with pytest.raises(MoneyError):
        parse_price(bad)


def test_cost_rounds_up_once():
    assert cost_msat(250_000, 4) == 1           # exactly 1 msat
    assert cost_msat(250_000, 5) == 2           # 1.25 -> 2
    assert cost_msat(1, 1) == 1                 # 1e-6 msat -> 1
    assert cost_msat(0, 1000) == 0
    assert cost_msat(50_000, 1_000_000) == 50_000


def test_msat_and_fraction():
    assert parse_msat(1000) == 1000
    assert parse_msat("12 sat") == 12_000
    assert parse_msat("5msat") == 5
    with pytest.raises(MoneyError):
        parse_msat("1.5 msat")
    with pytest.raises(MoneyError):
        parse_msat(1.0)
    assert parse_fraction("0.8") == (4, 5)


def test_format():
    assert format_price(250_000) == "0.25 msat/KB"
    assert format_price(2_000_000) == "2 msat/KB"
    assert format_msat(999) == "999 msat"
    assert format_msat(1_234_567) == "1,234.567 sat"


def test_no_floats_in_money_code():
    """No float literals or float() in the money/metering code; 0.0 only as a time value."""
    root = pathlib.Path(__file__).resolve().parents[2] / "tunnelgate"
    for name in ("money.py", "meter.py", "protocol/messages.py", "protocol/contract.py",
                 "protocol/terms.py", "protocol/book.py", "protocol/lifecycle.py", "protocol/pricer.py",
                 "protocol/buyer.py", "protocol/buyer_budget.py", "protocol/buyer_store.py",
                 "protocol/seller.py", "protocol/seller_hold.py", "protocol/seller_store.py",
                 "protocol/seller_timers.py", "protocol/seller_view.py"):
        text = (root / name).read_text()
        assert "float(" not in text, name
        floats = [t.string for t in tokenize.generate_tokens(io.StringIO(text).readline)
                  if t.type == tokenize.NUMBER and re.search(r"[.eE]", t.string)]
        assert set(floats) <= {"0.0", "1.0"}, (name, floats)   # times (stop_at, usage interval)
