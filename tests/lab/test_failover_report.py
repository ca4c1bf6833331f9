"""scripts/bench --failover's pure parts: reply times from `ping -D`, the gap around the
kill, the summary and its verdict."""

from tglab.failover import TARGET_GAP_S, longest_gap, reply_times, report, summarize

PING = """PING 198.18.21.2 (198.18.21.2) 56(84) bytes of data.
[100.000000] 64 bytes from 198.18.21.2: icmp_seq=1 ttl=63 time=0.5 ms
[100.050000] 64 bytes from 198.18.21.2: icmp_seq=2 ttl=63 time=0.5 ms
[100.750000] 64 bytes from 198.18.21.2: icmp_seq=16 ttl=63 time=0.5 ms
[100.800000] 64 bytes from 198.18.21.2: icmp_seq=17 ttl=63 time=0.5 ms
"""


def test_reply_times_are_the_receive_stamps_and_sequences():
    assert reply_times(PING) == [(100.0, 1), (100.05, 2), (100.75, 16), (100.8, 17)]


def test_the_gap_spans_the_kill_from_the_last_reply_before_it():
    assert abs(longest_gap(reply_times(PING), kill=100.06) - 0.70) < 1e-9


def test_no_reply_after_the_kill_is_no_gap_not_zero():
    assert longest_gap(reply_times(PING), kill=101.0) is None


def test_the_summary_takes_median_and_range_and_misses_when_one_round_is_over_target():
    rounds = [{"gap_s": 0.5, "detection_s": 0.6}, {"gap_s": 0.7, "detection_s": None, "reused_contract": True},
              {"gap_s": TARGET_GAP_S + 0.2, "detection_s": 0.7}]
    s = summarize(rounds)
    assert s["gap_s"] == {"median": 0.7, "lo": 0.5, "hi": TARGET_GAP_S + 0.2, "n": 3}
    assert s["detection_s"]["n"] == 2 and s["paid_s"] is None
    text = report(s, 3, "IPv4")
    assert "MISSES" in text and "1 round(s) without one" in text and "Althea" in text
    assert s["reused_contract"] == 1 and "no new contract in 1 round(s)" in text
    s["gap_s"]["hi"] = TARGET_GAP_S
    assert "meets" in report(s, 3, "IPv4")
