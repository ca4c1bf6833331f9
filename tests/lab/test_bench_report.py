"""scripts/bench's report: the ratios are tunnelgate's figures over each
reference's, for uploads and downloads, each the median of its rounds' ratios
with their range and a verdict (too wide to conclude, or not); a failed row
says why. (The turns that take the runs: tests/lab/test_bench_turns.py.)"""

from __future__ import annotations

import pytest

from tglab import bench_report as report


def _result(single, multi, down, ping, cpu, cpu_down):
    return {"single": [single * 1e6], "multi": [multi * 1e6], "down": [down * 1e6],
            "single_mbps": single, "multi_mbps": multi, "down_mbps": down,
            "ping_idle": {"avg_ms": ping}, "ping_load": {"avg_ms": ping * 4}, "first_ms": 3.0,
            "cpu_s_per_gbit": {"client": cpu[0], "gw": cpu[1]},
            "cpu_s_per_gbit_down": {"client": cpu_down[0], "gw": cpu_down[1]}}


def test_ratios_cover_downloads_and_their_cpu():
    rows = [report.Row("wg-sid", "wireguard-go (Debian sid)", result=_result(2000, 2000, 2500, 0.5, (0.3, 0.3), (0.25, 0.25))),
            report.Row("tg", "tunnelgate", result=_result(1800, 2200, 2000, 0.7, (0.3, 0.4), (0.4, 0.35)))]
    (r,) = report.ratios(rows)
    assert r["vs"] == "wg-sid"
    assert r["single_x"] == pytest.approx(0.9) and r["multi_x"] == pytest.approx(1.1)
    assert r["down_x"] == pytest.approx(0.8)
    assert r["cpu_per_gbit_x"] == pytest.approx(0.7 / 0.6)
    assert r["cpu_per_gbit_down_x"] == pytest.approx(0.75 / 0.5)
    assert r["ping_idle_diff_ms"] == pytest.approx(0.2)
    text = report.ratio_text([r])
    assert "TCP 1 down x0.80" in text and "(downloads x1.50)" in text

    table = report.table(rows + [report.Row("wg-deb", "wireguard-go (Debian 12)", error="RuntimeError: boom")], 3, 5)
    head, _, sid, tg, failed, _note = table.splitlines()
    assert "TCP 1 down" in head and "CPU down" in head
    assert [c.strip() for c in tg.strip("|").split("|")][3] == "2000"
    assert "0.40+0.35" in tg
    assert failed.startswith("| wireguard-go (Debian 12)") and "FAILED: boom" in failed


def test_idle_ping_difference_shows_its_rounds():
    # rounds are taken in turn, so tunnelgate's round i minus the reference's
    # round i is a paired difference; the report gives their range
    wg = _result(2000, 2000, 2500, 0.5, (0.3, 0.3), (0.3, 0.3))
    tg = _result(2000, 2000, 2500, 0.6, (0.3, 0.3), (0.3, 0.3))
    wg["ping_idle"] = {"avg_ms": 0.5, "rounds": [0.45, 0.55, 0.50]}
    tg["ping_idle"] = {"avg_ms": 0.6, "rounds": [0.50, 0.70, 0.60]}
    (r,) = report.ratios([report.Row("wg-sid", "wg", result=wg), report.Row("tg", "tunnelgate", result=tg)])
    assert r["ping_idle_round_diffs_ms"] == pytest.approx([0.05, 0.15, 0.10])
    assert "ping +0.100 ms idle (rounds +0.050 to +0.150)," in report.ratio_text([r])
    # rounds that do not pair up (a JSON from an older bench) give no range
    del wg["ping_idle"]["rounds"][0]
    (r,) = report.ratios([report.Row("wg-sid", "wg", result=wg), report.Row("tg", "tunnelgate", result=tg)])
    assert r["ping_idle_round_diffs_ms"] is None and "ping +0.100 ms idle," in report.ratio_text([r])


def test_a_result_without_download_figures_still_renders():
    # a JSON from before downloads were measured: no down column, no down ratio
    old = _result(1000, 1000, 1, 0.5, (0.3, 0.3), (0.3, 0.3))
    for k in ("down", "down_mbps", "cpu_s_per_gbit_down"):
        del old[k]
    rows = [report.Row("wg-sid", "wg", result=dict(old)), report.Row("tg", "tunnelgate", result=dict(old))]
    (r,) = report.ratios(rows)
    assert r["down_x"] is None and r["cpu_per_gbit_down_x"] is None
    assert "down x" not in report.ratio_text([r])
    assert "| - " in report.table(rows, 1, 2).splitlines()[2]
    # the idle-ping round failed: no idle figure, the rest stands
    del rows[1].result["ping_idle"]
    (r,) = report.ratios(rows)
    assert r["ping_idle_diff_ms"] is None and "ping - ms idle" in report.ratio_text([r])
    assert "| - " in report.table(rows, 1, 2).splitlines()[3]


# ---------------------------------------------------------------- ratios in turns

def test_a_ratio_is_the_median_of_the_rounds_ratios_not_the_ratio_of_medians():
    # the host drifts between rounds: each round's pair of runs saw the same
    # host, so tunnelgate was ahead in two rounds of three; the medians of the
    # rows (1500 against 2000) would say x0.75
    st = report.ratio_stats([1000, 1500, 3000], [800, 2000, 2600])
    assert st["rounds"] == pytest.approx([1.25, 0.75, 3000 / 2600])
    assert st["x"] == pytest.approx(3000 / 2600)
    assert (st["lo"], st["hi"]) == (pytest.approx(0.75), pytest.approx(1.25))
    assert st["verdict"] == "too wide"
    # rounds missing on either side (a failed run, an old JSON) pair only what both have
    assert report.ratio_stats([1000, 0, 900], [1000, 1000]) == {
        "x": 1.0, "lo": 1.0, "hi": 1.0, "rounds": [1.0], "verdict": "one round"}
    assert report.ratio_stats(None, [1.0]) is None and report.ratio_stats([], []) is None


@pytest.mark.parametrize("rounds, expected", [
    ([1.05], "one round"),                      # a single round has no range
    ([1.01, 1.05, 1.10], "above"),              # every round ahead, within ±10 % of x1.05
    ([0.80, 0.85, 0.90], "below"),
    ([0.97, 1.00, 1.04], "level"),              # narrow, but contains 1.0: neither ahead
    ([0.90, 1.00, 1.10], "level"),              # exactly ±10 %: still within
    ([0.89, 1.00, 1.05], "too wide"),           # one round 11 % below the median
    ([1.00, 1.00, 1.11], "too wide"),           # ... or 11 % above
    ([0.69, 0.80, 1.00], "too wide"),           # the three evening runs
])
def test_verdict_on_the_spread_of_the_rounds(rounds, expected):
    st = report.ratio_stats(rounds, [1.0] * len(rounds))
    assert st["verdict"] == expected
    assert (expected in report.CONCLUSIVE) == (expected not in ("one round", "too wide"))


def _rounds_result(single, multi, down):
    r = _result(1, 1, 1, 0.5, (0.3, 0.3), (0.3, 0.3))
    r.update(single=[x * 1e6 for x in single], multi=[x * 1e6 for x in multi],
             down=[x * 1e6 for x in down])
    return r


def test_the_report_says_which_ratios_are_too_wide_to_conclude():
    wg = _rounds_result([2000, 2000, 2000], [2000, 2000, 2000], [2000, 2000, 2000])
    tg = _rounds_result([2100, 2150, 2200], [1400, 2000, 2600], [1950, 2000, 2050])
    (r,) = report.ratios([report.Row("wg-sid", "wireguard-go (Debian sid)", result=wg),
                         report.Row("tg", "tunnelgate", result=tg)])
    assert r["single_x"] == pytest.approx(1.075) and r["single_verdict"] == "above"
    assert r["single_range"] == [pytest.approx(1.05), pytest.approx(1.10)]
    assert r["multi_x"] == pytest.approx(1.0) and r["multi_verdict"] == "too wide"
    assert r["down_verdict"] == "level"
    assert r["multi_round_x"] == pytest.approx([0.7, 1.0, 1.3])
    text = report.ratio_text([r])
    assert "TCP 1 x1.07 [1.05-1.10]," in text or "TCP 1 x1.08 [1.05-1.10]," in text
    assert "TCP 4 x1.00 [0.70-1.30] TOO WIDE" in text
    assert "TCP 1 down x1.00 [0.97-1.02] ~1" in text
    tail = text.splitlines()[-2:]
    assert tail[0].startswith("NOT CONCLUSIVE")
    assert tail[1].strip().startswith("TCP 4 vs wireguard-go (Debian sid): x1.00, rounds x0.70 to x1.30: too wide")
    assert report.inconclusive([r]) == [tail[1].strip()]
    # all narrow: the report says so
    tg["multi"] = [2100e6, 2150e6, 2200e6]
    (r,) = report.ratios([report.Row("wg-sid", "wg", result=wg), report.Row("tg", "tunnelgate", result=tg)])
    assert report.inconclusive([r]) == []
    assert report.ratio_text([r]).splitlines()[-1].startswith("every ratio's rounds within ±10 %")


def test_one_round_concludes_nothing():
    wg = _rounds_result([2000], [2000], [2000])
    tg = _rounds_result([2200], [2200], [2200])
    (r,) = report.ratios([report.Row("wg-sid", "wg", result=wg), report.Row("tg", "tunnelgate", result=tg)])
    assert r["single_verdict"] == "one round"
    assert "TCP 1 x1.10," in report.ratio_text([r])
    assert len(report.inconclusive([r])) == 3
    assert "one round: no range" in report.inconclusive([r])[0]
    assert report.ratio_text([r]).splitlines()[-1].startswith("NOT CONCLUSIVE: one round: no range")
