"""scripts/bench's report: the ratios are tunnelgate's figures over each
reference's, for uploads and downloads, each the median of its rounds' ratios
with their range and a verdict (too wide to conclude, or not); a failed row
says why. And the turns: every path's runs taken round by round, in turn."""

from __future__ import annotations

import pytest

from tglab import bench
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


def test_idle_pings_take_turns_with_every_path_up(monkeypatch):
    # every path up at once, each taking its pings in turn, the order reversed
    # every round; each path's figure is the mean of its rounds
    import contextlib

    events = []

    @contextlib.contextmanager
    def fake_lab():
        lab = type("Lab", (), {})()
        yield lab
        events.append(("destroyed", lab.key))

    def up_for(key):
        @contextlib.contextmanager
        def up(lab, work, fam):
            lab.key = key
            events.append(("up", key))
            yield {}
            events.append(("down", key))
        return up

    rtt = {"a": iter([0.5, 0.7, 0.6]), "b": iter([0.4, 0.4, 0.7])}

    def pinger(lab, count, dst):
        if count == 3:
            events.append(("warm", lab.key))
            return {"avg_ms": 9.9}
        events.append(("ping", lab.key))
        return {"avg_ms": next(rtt[lab.key])}

    monkeypatch.setattr(bench, "_lab", fake_lab)
    got = bench.idle_pings({"a": up_for("a"), "b": up_for("b")}, rounds=3, count=20, pinger=pinger)
    pings = [k for e, k in events if e == "ping"]
    assert pings == ["a", "b", "b", "a", "a", "b"]
    assert events.index(("up", "b")) < events.index(("ping", "a"))      # both up before any figure
    assert got["a"]["avg_ms"] == pytest.approx(0.6) and got["b"]["avg_ms"] == pytest.approx(0.5)
    assert got["a"]["rounds"] == [0.5, 0.7, 0.6]
    assert {("down", "a"), ("down", "b"), ("destroyed", "a"), ("destroyed", "b")} <= set(events)


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


def test_turns_reverse_the_order_every_round():
    assert list(bench.turns(["a", "b", "c"], 3)) == [(0, ["a", "b", "c"]), (1, ["c", "b", "a"]),
                                                     (2, ["a", "b", "c"])]
    assert list(bench.turns(["a"], 0)) == []


def test_measure_in_turns_takes_each_column_of_each_path_in_turn():
    calls = []

    def fake_iperf(lab, seconds, streams, dst, reverse):
        calls.append((lab, streams, reverse))
        if lab == "bad" and len([c for c in calls if c[0] == "bad"]) == 4:
            raise RuntimeError("iperf3 -P 1 failed: boom")      # its second round's first run
        n = len(calls)
        return {"bps": n * 1e6, "bytes": n * 1000, "seconds": seconds}

    paths = {k: bench.PathUp(k, {}, None) for k in ("a", "bad", "c")}
    errors = {}
    got = bench.measure_in_turns(paths, 3, 5, run_iperf=fake_iperf, errors=errors)
    order = [c[0] for c in calls]
    # round 1: a bad c per column; round 2 reversed: c bad(fails, out) a, then c a; round 3: a c
    assert order == ["a", "bad", "c"] * 3 + ["c", "bad", "a", "c", "a", "c", "a"] + ["a", "c"] * 3
    assert [(s, r) for _, s, r in calls[:9:3]] == [(1, False), (4, False), (1, True)]
    assert set(got) == {"a", "c"} and "boom" in errors["bad"]
    # each list in round order: a's single-stream runs were the 1st, 12th and 17th call
    assert got["a"]["single"] == [1e6, 12e6, 17e6] and got["a"]["single_mbps"] == 12
    assert got["c"]["down"] == [9e6, 15e6, 22e6] and got["a"]["rounds"] == 3
    assert got["a"]["single_bits"] == (1 + 12 + 17) * 8000
