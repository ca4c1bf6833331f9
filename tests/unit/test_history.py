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
