"""The scale benchmark's machinery works (tglab/scale.py): a real gateway
daemon in a lab, 5 fake peers handshake, open 50 contracts (PROPOSE, ACCEPT, PAY,
PAID over their control channels), send load that the up host receives. Only
sanity is asserted, never speed."""

from __future__ import annotations

import os
import shutil

import pytest

from tglab import scale

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft not installed")
def test_scale_machinery_5_peers_50_contracts(tmp_path):
    res = scale.lab_run(peers=5, contracts=50, seconds=1.0, size=1000, pay=True, batch=16, work=tmp_path,
                        idle_s=0.5)
    prefix = res["lab"]
    assert prefix.startswith("tgS")
    assert not [ns for ns in os.popen("ip netns list").read().split() if ns.startswith(prefix)], \
        "the lab was not destroyed"

    hs = res["handshakes"]       # (one peer handshakes alone first: see memory per peer)
    assert hs["completed"] == hs["peers"] == 4, hs
    assert hs["elapsed_s"] > 0 and hs["per_s"] > 0

    for key, want in (("contracts_1", 5), ("contracts", 50)):
        ct = res[key]
        assert ct["complete"], ct
        assert ct["gateway_live"] == ct["requested"] == want, ct
        assert ct["gateway_states"] == {"PAID": want}, ct
        assert ct["paid"] == want, ct

    assert res["memory_peers"]["rss_after_kb"] > 0 and res["memory_peers"]["peers"] == 4
    assert res["memory_contracts"]["new_contracts"] == 45
    assert res["memory_contracts"]["second_half"] == 25       # 10 a peer, after 5 (of which 1 came first)
    assert res["per_contract_kb"] == res["memory_contracts"]["per_contract_kb"]
    assert res["per_peer_kb"] == res["memory_peers"]["per_peer_kb"]

    for key, dests, contracts in (("load_1", 5, 5), ("load", 50, 50), ("load_same", 5, 50)):
        ld = res[key]
        assert ld["destinations"] == dests and ld["peers"] == 5, ld
        assert ld["contracts"] == contracts, ld
        assert ld["sent_packets"] > 0, ld
        assert ld["received_packets"] > 0 and ld["received_bytes"] > 0, ld
        # what the up host counted came through the gateway: never more than was sent
        assert ld["received_packets"] <= ld["sent_packets"], ld
        assert ld["received_bytes"] == ld["received_packets"] * 1000, ld
        assert ld["gateway_cpu_s"] > 0, ld
    assert "contracts, traffic to 5" in scale.table({"lab_result": res})


def test_table_renders_from_a_result():
    mi = scale.micro(sizes=(10, 200), calls=2000, repeats=1)
    assert [r["contracts"] for r in mi["rows"]] == [10, 200]
    assert all(r["all_forwarded"] for r in mi["rows"])
    assert "largest/smallest" in scale.table({"micro": mi})

