import random

import pytest

from tunnelgate.protocol.channel import HEADER, INITIAL_RTO, MAX_RTO, MIN_RTO, WINDOW, Channel, ChannelFull


def run(a, b, msgs, rng, loss=0.0, dup=0.0, reorder=0.0, steps=4000, dt=0.02):
    """Send msgs a->b (and some b->a) over a lossy link; returns what b delivered."""
    now = 0.0
    got = []
    link = []            # (deliver_at, dst, frame)
    for x in msgs:
        a.send(x)
    for _ in range(steps):
        now += dt
        for src, dst in ((a, b), (b, a)):
            for fr in src.poll(now):
                if rng.random() < loss:
                    continue
                delay = 0.01 + (rng.random() * 0.3 if rng.random() < reorder else 0)
                link.append((now + delay, dst, fr))
                if rng.random() < dup:
                    link.append((now + delay + 0.05, dst, fr))
        due = [x for x in link if x[0] <= now]
        link = [x for x in link if x[0] > now]
        rng.shuffle(due)
        for _, dst, fr in due:
            out = dst.receive(fr, now)
            if dst is b:
                got.extend(out)
        if len(got) == len(msgs) and not a.pending and not link:
            break
    return got, now


@pytest.mark.parametrize("seed", range(5))
def test_lossy_duplicating_reordering_link_delivers_in_order(seed):
    rng = random.Random(seed)
    a, b = Channel(epoch=11), Channel(epoch=22)
    msgs = [f"m{i}".encode() for i in range(300)]
    got, _ = run(a, b, msgs, rng, loss=0.25, dup=0.1, reorder=0.3)
    assert got == msgs
    assert a.pending == 0
    assert b.stats["duplicates"] > 0 and a.stats["retransmits"] > 0


def test_backoff_doubles_and_caps():
    a = Channel(epoch=1)
    a.send(b"x")
    times = []
    now = 0.0
    while now < 12:
        if a.poll(now):
            times.append(round(now, 2))
        now += 0.01
    gaps = [round(t2 - t1, 1) for t1, t2 in zip(times, times[1:])]
    assert gaps[:6] == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert INITIAL_RTO == 0.2 and MAX_RTO == 2.0
    assert times[0] == 0.0
    # first retransmission after the initial RTO
    a2 = Channel(epoch=1)
    a2.send(b"y")
    assert a2.poll(0.0)
    assert a2.next_deadline() == pytest.approx(0.2)
    assert not a2.poll(0.19) and a2.poll(0.2)


def test_ack_stops_retransmission_and_sack():
    a, b = Channel(epoch=1), Channel(epoch=2)
    for i in range(3):
        a.send(bytes([i]))
    f0, f1, f2 = a.poll(0.0)
    assert b.receive(f2, 0.01) == []          # out of order: buffered
    acks = b.poll(0.01)
    assert len(acks) == 1 and len(acks[0]) == HEADER.size
    a.receive(acks[0], 0.02)                   # sack covers seq 2
    assert a.pending == 2
    assert b.receive(f0, 0.03) == [b"\x00"]
    assert b.receive(f1, 0.03) == [b"\x01", b"\x02"]
    a.receive(b.poll(0.04)[0], 0.05)
    assert a.pending == 0 and a.next_deadline() is None


def test_bounded_window_and_queue():
    a = Channel(epoch=1, max_queue=10)
    for i in range(10):
        a.send(b"x")
    with pytest.raises(ChannelFull):
        a.send(b"y")
    b = Channel(epoch=2, max_queue=1000)
    for i in range(200):
        b.send(b"z")
    assert len(b.poll(0.0)) == WINDOW


def test_peer_restart_new_epoch():
    rng = random.Random(3)
    a, b = Channel(epoch=100), Channel(epoch=200)
    got, _ = run(a, b, [b"1", b"2", b"3"], rng)
    assert got == [b"1", b"2", b"3"]
    # b restarts: fresh state, new epoch; a keeps its stream (seq continues at 3)
    b2 = Channel(epoch=201)
    got, _ = run(a, b2, [b"4", b"5"], rng, loss=0.2)
    assert got == [b"4", b"5"]
    # and b2 -> a works: a sees a new peer epoch and resets its receive side
    got, _ = run(b2, a, [b"r1"], rng)
    assert got == [b"r1"] and a.stats["peer_resets"] == 1
    # a restarts too
    a2 = Channel(epoch=101)
    got, _ = run(a2, b2, [b"6"], rng)
    assert got == [b"6"]


def test_stale_epoch_frames_ignored():
    a_old, b = Channel(epoch=1), Channel(epoch=9)
    a_old.send(b"old")
    stale = a_old.poll(0.0)[0]
    assert b.receive(stale, 0.0) == [b"old"]
    a_new = Channel(epoch=2)
    a_new.send(b"new")
    assert b.receive(a_new.poll(0.0)[0], 0.1) == [b"new"]
    assert b.receive(stale, 0.2) == []
    assert b.stats["stale_epoch"] == 1


def test_reset_keeps_pending():
    a, b = Channel(epoch=1), Channel(epoch=2)
    a.send(b"p1")
    a.poll(0.0)               # lost
    a.reset(epoch=3)
    a.send(b"p2")
    got = []
    for fr in a.poll(1.0):
        got += b.receive(fr, 1.0)
    assert got == [b"p1", b"p2"]


def test_bad_frames_counted_not_raised():
    b = Channel(epoch=2)
    rng = random.Random(1)
    for _ in range(3000):
        fr = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 60)))
        if rng.random() < 0.5 and len(fr) >= 1:
            fr = bytes([rng.choice((1, 2))]) + fr[1:]
        b.receive(fr, 0.0)
    assert b.stats["bad_frames"] > 0


def _exchange(a, b, t_send, t_ack):
    """a sends what it has at t_send, b receives it and acks at t_ack."""
    frames = a.poll(t_send)
    for fr in frames:
        b.receive(fr, t_ack)
    for fr in b.poll(t_ack):
        a.receive(fr, t_ack)
    return frames


def test_rto_follows_measured_rtt():
    a, b = Channel(epoch=1), Channel(epoch=2)
    assert a.rto == INITIAL_RTO and a.srtt is None
    a.send(b"x")
    _exchange(a, b, 0.0, 0.03)
    assert a.srtt == pytest.approx(0.03) and a.rttvar == pytest.approx(0.015)
    assert a.rto == pytest.approx(0.09)              # SRTT + 4 RTTVAR
    a.send(b"y")
    assert a.poll(1.0)
    assert a.next_deadline() == pytest.approx(1.09)  # the new message uses the measured RTO
    assert not a.poll(1.08) and a.poll(1.09)         # retransmitted after it


def test_rto_floor_and_ceiling():
    a, b = Channel(epoch=1), Channel(epoch=2)
    for i in range(5):
        a.send(b"x")
        _exchange(a, b, float(i), i + 0.001)
    assert a.rto == pytest.approx(MIN_RTO)
    c, d = Channel(epoch=3), Channel(epoch=4)
    c.send(b"x")
    c.poll(0.0)
    assert c.poll(0.2)                               # RTO 0.2: retransmitted, channel RTO backs off
    assert c.rto == pytest.approx(0.4)
    for fr in c.poll(10.0):
        d.receive(fr, 10.0)
    for fr in d.poll(10.0):
        c.receive(fr, 12.0)                          # acked after a retransmission: no sample (Karn)
    assert c.srtt is None and c.rto <= MAX_RTO


def test_karn_ignores_retransmitted_and_samples_the_newest():
    a, b = Channel(epoch=1), Channel(epoch=2)
    a.send(b"0")
    f0 = a.poll(0.0)
    a.send(b"1")
    f1 = a.poll(0.1)
    for fr in f0 + f1:
        b.receive(fr, 0.15)
    (ack,) = b.poll(0.15)
    a.receive(ack, 0.15)                             # newest acked was sent at 0.1: RTT 0.05
    assert a.srtt == pytest.approx(0.05)


def test_timeout_resends_the_oldest_and_the_sacked_gaps_only():
    a, b = Channel(epoch=1), Channel(epoch=2)
    for i in range(4):
        a.send(bytes([i]))
    f = a.poll(0.0)
    assert len(f) == 4
    again = a.poll(0.2)                              # no ack at all: only the oldest goes again
    assert [HEADER.unpack_from(x)[3] for x in again] == [0]
    assert a.stats["retransmits"] == 1
    b.receive(f[2], 0.25)                            # seq 2 arrived, 0, 1 and 3 did not (yet)
    for fr in b.poll(0.25):
        a.receive(fr, 0.25)
    again = a.poll(0.41)         # 1 is below a selectively acked seq: lost; 3 waits; 0 is not due
    assert [HEADER.unpack_from(x)[3] for x in again] == [1]
    assert [HEADER.unpack_from(x)[3] for x in a.poll(0.61)] == [0]
