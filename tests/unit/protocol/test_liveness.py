"""Detecting a dead gateway from silence while sending, within dead_after_s; never from idleness."""

from tunnelgate.protocol.liveness import Liveness


def run(lv, t0, t1, step=0.05, send=True, answer=False):
    """Drive the monitor as a daemon would; returns the time it declared the link dead."""
    t, pid = t0, 0
    while t < t1:
        if send:
            lv.sent(t)
        pid += 1
        probe, died = lv.poll(t, pid)
        if probe and answer:
            lv.answered(pid, t + 0.002)
        if died:
            return t
        t = round(t + step, 6)
    return None


def test_silence_while_sending_is_death_within_the_bound():
    lv = Liveness(dead_after_s=0.6)
    lv.heard(0.0)
    died = run(lv, 0.0, 5.0)
    assert died is not None and 0.6 <= died <= 0.65
    assert lv.dead and lv.next_deadline() >= died


def test_answers_keep_it_alive_and_measure_rtt():
    lv = Liveness(dead_after_s=0.6)
    assert run(lv, 0.0, 10.0, answer=True) is None
    assert lv.rtt_ms is not None and 1.5 < lv.rtt_ms < 2.5
    assert lv.loss(10.0) == 0.0


def test_idle_link_is_not_declared_dead_but_probed_rarely():
    lv = Liveness(dead_after_s=0.6, idle_probe_s=5.0)
    lv.heard(0.0)
    probes = 0
    for i in range(1, 200):
        now = i * 0.05
        probe, died = lv.poll(now, i)
        if probe:
            probes += 1
            lv.answered(i, now + 0.001)
        assert not died
    assert probes == 2      # at 0.05 s and 5.05 s
    # an idle probe left unanswered is a send like any other: the link dies dead_after_s later
    assert run(lv, 10.0, 12.0, send=False) is not None


def test_heard_revives_and_loss_counts_unanswered_probes():
    lv = Liveness(dead_after_s=0.3)
    run(lv, 0.0, 1.0)
    assert lv.dead
    assert lv.heard(1.0) is True and not lv.dead
    assert lv.loss(5.0) == 1.0


def test_next_deadline_moves_forward():
    lv = Liveness(dead_after_s=0.6)
    lv.heard(0.0)
    lv.sent(1.0)
    assert lv.next_deadline() == 1.2
    lv.poll(1.2, 1)
    assert abs(lv.next_deadline() - 1.4) < 1e-9
    assert lv.poll(1.6, 2) == (True, True)
    assert lv.dead and abs(lv.next_deadline() - 1.8) < 1e-9   # a dead link is probed, to notice it return
