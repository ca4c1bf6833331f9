import json

import pytest

from tunnelgate import history
from tunnelgate.daemon.store import Store


def test_history_groups_events_per_contract_with_totals(tmp_path):
    db = tmp_path / "tunnelgate.db"
    s = Store(db)
    s.add_events([
        (100.0, "proposed", "c1", "P", "198.18.2.2/32", "", 0, "{}"),
        (100.1, "accepted", "c1", "P", "198.18.2.2/32", "", 0, "{}"),
        (100.2, "paid", "c1", "P", "198.18.2.2/32", "", 1000, "{}"),
        (160.0, "exhausted", "c1", "P", "198.18.2.2/32", "data limit reached", 0,
         json.dumps({"up": 10, "down": 999_990})),
        (161.0, "accepted", "c2", "P", "198.18.2.2/32", "", 0, "{}"),
        (170.0, "revoked", "c2", "P", "198.18.2.2/32", "payment not confirmed within the grace period", 0, "{}"),
    ])
    s.close()
    items = history.contracts(db)
    assert [c["contract_id"] for c in items] == ["c1", "c2"]
    c1, c2 = items
    assert c1["state"] == "exhausted" and c1["paid_msat"] == 1000 and c1["down"] == 999_990
    assert c2["state"] == "revoked" and c2["paid_msat"] == 0 and "grace" in c2["reason"]
    text = history.render(items)
    assert "2 contracts, 1 paid, total 1 sat" in text


def test_history_without_database_says_so(tmp_path):
    with pytest.raises(history.HistoryError, match="has not run"):
        history.contracts(tmp_path / "none.db")


def test_client_history_says_what_left_the_wallet_and_what_is_still_credit(tmp_path):
    # [payment] prepay_msat: the first payment carries more than its contract costs; the
    # next contracts are paid from that credit, and nothing more leaves the wallet
    db = tmp_path / "tunnelgate.db"
    s = Store(db)
    d = "198.18.2.2/32"
    s.add_events([
        (100.0, "accepted", "c1", None, d, "", 50, "{}"),
        (100.2, "paid", "c1", None, d, "", 50, json.dumps({"credit_msat": 950, "from_credit": False})),
        (110.0, "accepted", "c2", None, d, "", 50, "{}"),
        (110.1, "paid", "c2", None, d, "", 50, json.dumps({"credit_msat": 900, "from_credit": True})),
        (120.0, "accepted", "c3", None, d, "", 50, "{}"),
    ])
    s.record_client_payment("c1", "dummy", "proof-1", 1000)
    s.set_client_payment_state("c1", "confirmed")
    s.record_client_payment("c3", "dummy", "proof-3", 50)          # sent, not yet confirmed
    s.close()
    items = history.contracts(db)
    c1, c2, c3 = items
    assert (c1["sent_msat"], c1["sent_confirmed"], c1["from_credit"]) == (1000, True, False)
    assert (c2["sent_msat"], c2["from_credit"]) == (0, True) and c3["sent_msat"] == 50
    text = history.render(items)
    assert "(from prepaid credit)" in text.splitlines()[2]
    assert text.splitlines()[-1] == ("3 contracts, 2 paid, total 100 msat; sent 1.050 sat from the wallet, "
                                     "50 msat of it not yet confirmed by the gateway, "
                                     "900 msat of it prepaid credit at the gateway, not used yet")


def test_history_without_prepaying_shows_no_wallet_line(tmp_path):
    # the client paid exactly what each contract cost; the gateway keeps no client payments
    for role in ("client", "gateway"):
        db = tmp_path / f"{role}.db"
        s = Store(db)
        s.add_events([(100.0, "paid", "c1", "P", "198.18.2.2/32", "", 50, "{}")])
        if role == "client":
            s.record_client_payment("c1", "dummy", "proof", 50)
        s.close()
        assert history.render(history.contracts(db)).splitlines()[-1] == "1 contracts, 1 paid, total 50 msat"
