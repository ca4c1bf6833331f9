"""`tunnelgate status` renders every field a person needs from recorded daemon snapshots."""

import json
from pathlib import Path

from tunnelgate.status_text import contracts_table, render

DATA = Path(__file__).parent / "data"


def load(name):
    return json.loads((DATA / name).read_text())


def test_client_status_shows_contracts_spend_and_payment_notice():
    st = load("status_client.json")
    text = render(st)
    c = st["market"]["contracts"][0]
    assert "connected" in text and st["address"] in text
    assert c["destination"] in text and c["contract_id"] in text and c["state"] in text
    assert "0.5 msat/KB" in text
    assert "this hour" in text and "total" in text
    assert "no real payment" in text
    assert "queued" in text          # the renewal waits behind the current contract


def test_gateway_status_shows_peers_and_revenue():
    st = load("status_gateway.json")
    text = render(st)
    peer = st["peers"][0]
    assert peer["address"] in text and peer["public_key"] in text
    assert "paid" in text and "contracts" in text
    assert all(c["contract_id"] in text for c in st["market"]["contracts"])


def test_quota_bar_and_percentage():
    row = contracts_table([{"destination": "198.18.2.2/32", "state": "GRACE", "price": 250_000,
                            "limit_kb": 100, "used": 50_000, "time_left_s": 30, "cost_msat": 25,
                            "paid": False, "contract_id": "abc"}])[1]
    assert "#####....." in row and "50%" in row and "0.25 msat/KB" in row and "30 s" in row


def test_no_deal_and_budget_reasons_are_shown():
    st = load("status_client.json")
    st["market"]["budget_reason"] = "contract cost 2 sat would exceed max_spend_total"
    st["market"]["destinations"]["198.18.9.9/32"] = {"no_deal_reason": "price above my maximum",
                                                     "retry_in_s": 42, "contract": None, "queued": [],
                                                     "reason": ""}
    text = render(st)
    assert "would exceed max_spend_total" in text
    assert "198.18.9.9/32: price above my maximum (retry in 42 s)" in text


def test_wallet_credit_no_funds_and_pause_lines():
    st = load("status_client.json")
    st["wallet"] = {"balance_msat": 1500, "low_balance": True, "low_balance_msat": 5000,
                    "no_funds": "wallet: insufficient funds"}
    st["credit_msat"] = 6000
    st["settings"] = {"pause_buying": True}
    text = render(st)
    assert "wallet    1.500 sat  (below the warning level 5 sat)" in text
    assert "buying    stopped: wallet: insufficient funds" in text
    assert "credit    6 sat prepaid at the gateway" in text
    assert "buying    paused" in text


def test_data_path_thread_restarts_are_shown():
    st = load("status_gateway.json")
    assert "restarts" not in render(st)
    st["stats"] = {**st.get("stats", {}), "thread_restarts": 3, "thread_restarts_udp-to-tun": 2,
                   "thread_restarts_tun-to-udp": 1}
    line = [l for l in render(st).splitlines() if l.startswith("restarts")]
    assert line == ["restarts  data-path threads restarted 3 times (tun-to-udp 1, udp-to-tun 2); "
                    "the log has the tracebacks: please report them"]


def test_gateway_status_shows_the_grace_budgets_and_their_use():
    st = load("status_gateway.json")
    st["market"]["grace"] = {"per_peer_kb": 200, "per_peer_s": 10, "strangers_kb_per_min": 800,
                             "strangers_used_kb_last_min": 350, "strangers_left_kb": 450, "peers_in_grace": 3}
    key = st["peers"][0]["public_key"]
    st["market"].setdefault("peers", {})[key] = {"grace": True, "grace_used_kb": 120}
    text = render(st)
    assert "200 KB / 10 s per peer" in text and "350 of 800 KB a minute" in text
    assert "3 peer(s) in grace" in text and "yes, 120 KB used" in text


def test_gateway_status_shows_handshakes_refused_by_reason():
    st = load("status_gateway.json")
    st["flood"] = {"bad_mac1": 5000, "rate_limited": 40, "queue_full": 2, "cookie_sent": 900,
                   "key_exchanges": 12, "queued": 0, "under_load": True, "worker_tid": 1}
    text = render(st)
    assert ("handshake 12 key exchanges; refused: 5000 bad MAC1, 40 rate-limited, 2 queue full; "
            "900 cookie replies (under load now)") in text


def test_a_relays_upstream_event_says_so():
    from tunnelgate.status_text import event_line
    ev = {"ts": 0.0, "kind": "destination_moved", "contract_id": None, "destination": "198.18.2.2/32",
          "amount_msat": 0, "reason": "its gateway stopped answering"}
    assert " upstream " not in event_line({**ev, "side": "downstream"})
    line = event_line({**ev, "side": "upstream"})
    assert line.split()[1] == "upstream" and line.endswith(": its gateway stopped answering")
