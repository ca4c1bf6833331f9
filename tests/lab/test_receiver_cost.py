"""tglab/receiver_cost.py: both receivers open the same kind of batches (a broken
in-memory handshake or a receiver dropping the batch raises)."""

from tglab.receiver_cost import measure, report


def test_both_receivers_open_every_batch_and_a_ratio_is_reported():
    r = measure(batches=6, gateways=3)
    assert set(r["ns_per_datagram"]) == {"bare", "initiators"} and r["ratio"] > 0
    assert "Initiators of 3 gateways" in report(r)
