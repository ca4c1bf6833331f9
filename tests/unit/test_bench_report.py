"""scripts/bench's report: the ratios are tunnelgate's figures over each
reference's, for uploads and downloads, and a failed row says why."""

from __future__ import annotations

import pytest

from tunnelgate.lab import bench


def _result(single, multi, down, ping, cpu, cpu_down):
    return {"single": [single * 1e6], "multi": [multi * 1e6], "down": [down * 1e6],
            "single_mbps": single, "multi_mbps": multi, "down_mbps": down,
            "ping_idle": {"avg_ms": ping}, "ping_load": {"avg_ms": ping * 4}, "first_ms": 3.0,
            "cpu_s_per_gbit": {"client": cpu[0], "gw": cpu[1]},
            "cpu_s_per_gbit_down": {"client": cpu_down[0], "gw": cpu_down[1]}}


def test_ratios_cover_downloads_and_their_cpu():
    rows = [bench.Row("wg-sid", "wireguard-go (Debian sid)", result=_result(2000, 2000, 2500, 0.5, (0.3, 0.3), (0.25, 0.25))),
            bench.Row("tg", "tunnelgate", result=_result(1800, 2200, 2000, 0.7, (0.3, 0.4), (0.4, 0.35)))]
    (r,) = bench.ratios(rows)
    assert r["vs"] == "wg-sid"
    assert r["single_x"] == pytest.approx(0.9) and r["multi_x"] == pytest.approx(1.1)
    assert r["down_x"] == pytest.approx(0.8)
    assert r["cpu_per_gbit_x"] == pytest.approx(0.7 / 0.6)
    assert r["cpu_per_gbit_down_x"] == pytest.approx(0.75 / 0.5)
    assert r["ping_idle_diff_ms"] == pytest.approx(0.2)
    text = bench.ratio_text([r])
    assert "TCP 1 down x0.80" in text and "(downloads x1.50)" in text

    table = bench.table(rows + [bench.Row("wg-deb", "wireguard-go (Debian 12)", error="RuntimeError: boom")], 3, 5)
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
    (r,) = bench.ratios([bench.Row("wg-sid", "wg", result=wg), bench.Row("tg", "tunnelgate", result=tg)])
    assert r["ping_idle_round_diffs_ms"] == pytest.approx([0.05, 0.15, 0.10])
    assert "ping +0.100 ms idle (rounds +0.050 to +0.150)," in bench.ratio_text([r])
    # rounds that do not pair up (a JSON from an older bench) give no range
    del wg["ping_idle"]["rounds"][0]
    (r,) = bench.ratios([bench.Row("wg-sid", "wg", result=wg), bench.Row("tg", "tunnelgate", result=tg)])
    assert r["ping_idle_round_diffs_ms"] is None and "ping +0.100 ms idle," in bench.ratio_text([r])


def test_a_result_without_download_figures_still_renders():
    # a JSON from before downloads were measured: no down column, no down ratio
    old = _result(1000, 1000, 1, 0.5, (0.3, 0.3), (0.3, 0.3))
    for k in ("down", "down_mbps", "cpu_s_per_gbit_down"):
        del old[k]
    rows = [bench.Row("wg-sid", "wg", result=dict(old)), bench.Row("tg", "tunnelgate", result=dict(old))]
    (r,) = bench.ratios(rows)
    assert r["down_x"] is None and r["cpu_per_gbit_down_x"] is None
    assert "down x" not in bench.ratio_text([r])
    assert "| - " in bench.table(rows, 1, 2).splitlines()[2]
    # the idle-ping round failed: no idle figure, the rest stands
    del rows[1].result["ping_idle"]
    (r,) = bench.ratios(rows)
    assert r["ping_idle_diff_ms"] is None and "ping - ms idle" in bench.ratio_text([r])
    assert "| - " in bench.table(rows, 1, 2).splitlines()[3]


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

    monkeypatch.setattr(bench, "_lab_for_pings", fake_lab)
    got = bench.idle_pings({"a": up_for("a"), "b": up_for("b")}, rounds=3, count=20, pinger=pinger)
    pings = [k for e, k in events if e == "ping"]
    assert pings == ["a", "b", "b", "a", "a", "b"]
    assert events.index(("up", "b")) < events.index(("ping", "a"))      # both up before any figure
    assert got["a"]["avg_ms"] == pytest.approx(0.6) and got["b"]["avg_ms"] == pytest.approx(0.5)
    assert got["a"]["rounds"] == [0.5, 0.7, 0.6]
    assert {("down", "a"), ("down", "b"), ("destroyed", "a"), ("destroyed", "b")} <= set(events)
