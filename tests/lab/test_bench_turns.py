"""scripts/bench's turns: every path's runs taken round by round, in turn,
every path up at once (tglab/bench.py; no network: the labs and runs are fakes)."""

from __future__ import annotations

import pytest

from tglab import bench


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


def test_a_flood_that_breaks_a_transfer_is_measured_as_zero_not_the_end_of_the_bench(monkeypatch):
    """wireguard-go under the replay flood lost iperf3's control connection: the turn records
    0 and the error, and the bench goes on."""
    from tglab import flood

    class P:
        lab, pids = None, {"pids": {"gw": 1}, "stranger": "s", "flood_stats": None, "port": 1, "init": b""}

    monkeypatch.setattr(flood, "back", lambda lab, ns: 0)
    monkeypatch.setattr(flood, "process_cpu", lambda pid: 0.0)
    monkeypatch.setattr(flood, "thread_cpu", lambda pid, name: None)
    monkeypatch.setattr(flood.time, "sleep", lambda s: None)

    def run_iperf(lab, seconds, streams, reverse=False):
        if not reverse:
            raise RuntimeError("iperf3 -P 1 to 198.18.2.2 failed: unable to receive control message\nlogs")
        return {"bps": 5e8}

    res = flood.one_turn(P, "none", 5, 1, run_iperf)
    assert res["up_bps"] == 0.0 and res["down_bps"] == 5e8
    assert res["transfer_errors"] == ["iperf3 -P 1 to 198.18.2.2 failed: unable to receive control message"]
