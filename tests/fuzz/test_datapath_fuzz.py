"""The data path's real handlers (gateway and client; datagrams and TUN reads)
never raise on mutated peer input, authenticated or not, nor on mutated TUN
frames: datapath_harness drives them (scripts/fuzz runs the same with more
cases). On the code before the fix this found IndexError in offload.gso_frame
(TCP data offset < 5), struct.error on short virtio-net frames and more."""

from datapath_harness import Harness

CASES = 20_000


def test_data_path_handlers_never_raise_on_mutated_input():
    h = Harness(seed=17).run(CASES)
    assert h.exception_count == 0, h.report() + "\n" + "\n".join(h.first_traceback.values())
    # the mutations reached the parsers: malformed input was dropped and counted
    assert h.stats["drop_bad_chunk"] and h.stats["drop_bad_gso"] and h.stats["drop_not_ip"]
    assert h.stats["rx_packets"] and h.stats["tx_packets"]
