import random
import threading
import warnings

import pytest

from tunnelgate.wire import MAC_LEN

from tunnelgate import session as session_mod
from tunnelgate.session import (
    CONTROL,
    DATA,
    HANDSHAKE_DONE,
    KEEPALIVE,
    PROTOCOL_NAME,
    Handshake,
    Initiator,
    Responder,
    SessionError,
    Timing,
    Transport,
    public_key,
)

from session_lab import CL_PRIV, CL_PUB, GW_PRIV, GW_PUB, Lab, groups, h


@pytest.fixture(autouse=True, params=[False, True], ids=["one-by-one", "batch"])
def _delivery(request, monkeypatch):
    """Every test runs twice: datagrams delivered through receive() and through receive_groups()."""
    monkeypatch.setattr(Lab, "batch", request.param)


def total(stats):
    return sum(v for k, v in stats.items() if k != "handshakes")


# -- handshake -------------------------------------------------------------


@pytest.mark.parametrize("cipher", ["chacha", "aesgcm"])
def test_handshake_and_both_directions(cipher):
    lab = Lab(cipher=cipher)
    lab.begin(b"client-hello")
    hs = lab.gw.receive(lab.to_gw.pop()[1], lab.now, "c1")
    assert isinstance(hs, Handshake)
    assert hs.peer_public == CL_PUB and hs.payload == b"client-hello" and hs.addr == "c1"
    assert not lab.client.established
    resp = lab.gw.accept(hs, lab.now, lab.rand(), b"100.64.0.2")
    assert lab.client.receive(resp, lab.now) == (HANDSHAKE_DONE, b"100.64.0.2")
    assert lab.client.established and lab.client.response_payload == b"100.64.0.2"
    assert lab.gw.peers() == [CL_PUB] and lab.gw.endpoint(CL_PUB) == "c1"

    for i in range(5):
        lab.send_up(b"up%d" % i)
        lab.send_down(b"down%d" % i, CONTROL if i == 4 else DATA)
    lab.send_up(b"", KEEPALIVE)
    lab.deliver()
    assert lab.gw_got == [(DATA, b"up%d" % i) for i in range(5)]
    assert lab.cl_got == [(DATA, b"down%d" % i) for i in range(4)] + [(CONTROL, b"down4")]
    assert total(lab.client.stats) == total(lab.gw.stats) == 0


class CountingLock:
    """A lock that counts how often state changes took it (and checks they never nest)."""

    def __init__(self):
        self.taken = 0
        self.held = False

    def __enter__(self):
        assert not self.held, "the session took its lock twice (a threading.Lock would deadlock)"
        self.held = True
        self.taken += 1

    def __exit__(self, *exc):
        self.held = False


def test_state_changes_take_the_lock_the_caller_passes():
    """The session makes no lock of its own (the sans-IO core imports no threading): the
    daemon passes one, and the handshake and timers on both sides run under it."""
    lab = Lab()
    lab.client = Initiator(CL_PRIV, GW_PUB, lab.timing, cipher="chacha", lock=(cl := CountingLock()))
    lab.gw = Responder(GW_PRIV, lab.timing, cipher="chacha", lock=(gw := CountingLock()))
    lab.begin()
    assert cl.taken == 1                          # begin
    lab.deliver()
    assert lab.client.established and gw.taken >= 1 and cl.taken >= 2   # accept; completion
    before = cl.taken, gw.taken
    lab.poll()
    assert cl.taken > before[0] and gw.taken > before[1]                 # both sides' timers
    assert not cl.held and not gw.held


def test_protocol_name_and_ephemeral_from_caller():
    assert PROTOCOL_NAME == b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
    rand = h("e") + b"\x01\x02\x03\x04"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = Initiator(CL_PRIV, GW_PUB).begin(1.0, 5, rand)
        b = Initiator(CL_PRIV, GW_PUB).begin(1.0, 5, rand)
    assert a == b  # no hidden randomness
    assert a[:8] == bytes([1, 0, 0, 0]) + b"\x01\x02\x03\x04"
    assert a[8:40] == public_key(rand[:32])  # the ephemeral is ours


def test_bad_rand_and_misuse_raise_session_error():
    c = Initiator(CL_PRIV, GW_PUB)
    with pytest.raises(SessionError):
        c.begin(0.0, 1, b"short")
    with pytest.raises(SessionError):
        Initiator(CL_PRIV, GW_PUB, cipher="rot13")
    lab = Lab()
    lab.begin()
    hs = lab.gw.receive(lab.to_gw.pop()[1], lab.now, "c1")
    lab.gw.accept(hs, lab.now, lab.rand(), b"")
    with pytest.raises(SessionError):
        lab.gw.accept(hs, lab.now, lab.rand(), b"")  # twice
    with pytest.raises(SessionError):
        Responder(GW_PRIV).accept(hs, lab.now, lab.rand(), b"")  # foreign
    with pytest.raises(SessionError):
        Timing(dead_after_s=0.5)  # a live gateway would look dead


def test_bad_kind_raises():
    lab = Lab().connect()
    with pytest.raises(SessionError):
        lab.client.seal(99, b"", lab.now)
    with pytest.raises(SessionError):
        lab.gw.seal(CL_PUB, 1, b"", lab.now)


def test_seal_before_handshake_returns_none():
    lab = Lab()
    assert lab.client.seal(DATA, b"x", lab.now) is None
    assert lab.client.seal_batch(DATA, [b"x"], lab.now) == []
    assert lab.gw.seal(CL_PUB, DATA, b"x", lab.now) is None
    assert lab.client.next_deadline() is None
    assert lab.client.poll(lab.now, lab.wall, lab.rand()) == []


def test_replayed_init_dropped():
    lab = Lab()
    lab.begin()
    first = lab.to_gw[0][1]
    lab.deliver()
    assert lab.gw.receive(first, lab.now, "evil") is None
    assert lab.gw.stats["stale_handshake"] == 1
    assert lab.gw.endpoint(CL_PUB) == "c1"
    # An older INIT after a newer one is stale too, even if never accepted.
    lab.begin()
    newer = lab.to_gw.pop()[1]
    lab.begin()
    newest = lab.to_gw.pop()[1]
    assert isinstance(lab.gw.receive(newest, lab.now, "c1"), Handshake)
    assert lab.gw.receive(newer, lab.now, "c1") is None
    assert lab.gw.stats["stale_handshake"] == 2



def test_restored_timestamps_make_old_inits_replays_after_a_restart():
    """A gateway restart: the new Responder gets the timestamps the old one accepted
    (what the daemon persisted from Handshake.timestamp); the INIT it answered, and any
    older one, are still replays; a newer one is accepted."""
    lab = Lab()
    lab.begin()
    older = lab.to_gw.pop()[1]
    lab.begin()
    answered = lab.to_gw[0][1]
    hs = lab.gw.receive(answered, lab.now, "c1")
    assert isinstance(hs, Handshake)
    persisted = {hs.peer_public: hs.timestamp}
    lab.gw.accept(hs, lab.now, lab.rand(), b"")

    restarted = Responder(GW_PRIV, lab.timing, timestamps=persisted)
    assert restarted.receive(answered, lab.now, "evil") is None
    assert restarted.receive(older, lab.now, "evil") is None
    assert restarted.stats["stale_handshake"] == 2 and restarted.stats["handshakes"] == 0
    # without them, the same replay would be answered: what the test is about
    assert isinstance(Responder(GW_PRIV, lab.timing).receive(answered, lab.now, "evil"), Handshake)

    lab.gw = restarted
    lab.begin()
    lab.deliver()
    assert restarted.peers() == [CL_PUB] and restarted.stats["handshakes"] == 1
    lab.send_up(b"after")
    lab.deliver()
    assert lab.gw_got[-1] == (DATA, b"after")


def test_timestamp_is_rejected_from_memory_before_it_is_persisted():
    """The INIT's timestamp counts from the moment receive() returns it: a replay that
    arrives before the daemon accepted (and persisted) is stale already."""
    lab = Lab()
    lab.begin()
    init = lab.to_gw[0][1]
    hs = lab.gw.receive(init, lab.now, "c1")
    assert isinstance(hs, Handshake)
    assert lab.gw.receive(init, lab.now, "evil") is None
    assert lab.gw.stats["stale_handshake"] == 1
    lab.gw.accept(hs, lab.now, lab.rand(), b"")


def test_restored_timestamps_survive_a_spray_of_fresh_keys(monkeypatch):
    """Unaccepted keys' timestamps are bounded (any key may send an INIT); a peer's
    restored or forgotten one must not be evicted by them, or its old INITs would be
    new again."""
    lab = Lab().connect()
    lab.begin()
    init = lab.to_gw[0][1]
    lab.deliver()
    ts = lab.gw._peers[CL_PUB].last_ts
    monkeypatch.setattr(session_mod, "_MAX_UNACCEPTED", 8)   # the same rule, fewer handshakes
    for gw in (Responder(GW_PRIV, lab.timing, timestamps={CL_PUB: ts}), lab.gw):
        if gw is lab.gw:
            gw.forget(CL_PUB)
        for i in range(20):
            other = Initiator(h("spray", i), GW_PUB, lab.timing, cipher="chacha")
            assert isinstance(gw.receive(other.begin(lab.now, lab.wall, lab.rand()), lab.now, "x"), Handshake)
        assert gw.receive(init, lab.now, "evil") is None


def test_stalled_wall_clock_still_gives_fresh_timestamps():
    lab = Lab()
    lab.begin()
    a = lab.to_gw.pop()[1]
    lab.wall -= 10**12  # clock stepped back
    lab.begin()
    b = lab.to_gw.pop()[1]
    assert isinstance(lab.gw.receive(a, lab.now, "c1"), Handshake)
    assert isinstance(lab.gw.receive(b, lab.now, "c1"), Handshake)


def test_wrong_gateway_key_is_never_answered():
    lab = Lab()
    lab.client = Initiator(CL_PRIV, public_key(h("someone else")))
    lab.begin()
    dg = lab.to_gw.pop()[1]
    assert lab.gw.receive(dg, lab.now, "c1") is None
    assert lab.gw.stats["bad_mac1"] == 1     # refused on MAC1: no key exchange done
    assert lab.gw.peers() == []
    assert lab.gw.poll(lab.now + 100) == []


def test_forged_resp_does_not_break_pending_handshake():
    lab = Lab()
    lab.begin()
    hs = lab.gw.receive(lab.to_gw.pop()[1], lab.now, "c1")
    resp = lab.gw.accept(hs, lab.now, lab.rand(), b"addr")
    forged = resp[:12] + bytes(len(resp) - 12)
    assert lab.client.receive(forged, lab.now) is None
    assert lab.client.stats["bad_mac"] == 1
    assert lab.client.receive(resp, lab.now) == (HANDSHAKE_DONE, b"addr")


def test_unauthenticated_garbage_never_answered():
    lab = Lab().connect()
    rng = random.Random(3)
    for t in range(8):
        for n in (0, 3, 8, 16, 40, 120, 200):
            dg = bytes([t, 0, 0, 0]) + rng.randbytes(n)
            assert lab.gw.receive(dg, lab.now, "x") is None
    assert lab.gw.endpoint(CL_PUB) == "c1"
    lab.to_gw.clear()
    assert all(addr == "c1" for addr, _ in lab.gw.poll(lab.now + 50))


# -- transport -------------------------------------------------------------


def test_each_datagram_decrypts_on_its_own():
    lab = Lab().connect()
    ups = [lab.client.seal(DATA, b"u%d" % i, lab.now) for i in range(200)]
    downs = lab.gw.seal_batch(CL_PUB, DATA, [b"d%d" % i for i in range(200)], lab.now)
    rng = random.Random(5)
    keep = sorted(rng.sample(range(200), 120))
    order = keep[:]
    rng.shuffle(order)
    for i in order:
        assert lab.gw.receive(ups[i], lab.now, "c1") == (CL_PUB, DATA, b"u%d" % i)
        assert lab.client.receive(downs[i], lab.now) == (DATA, b"d%d" % i)


def test_replayed_datagram_dropped_and_counted():
    lab = Lab().connect()
    up = lab.client.seal(DATA, b"x", lab.now)
    down = lab.gw.seal(CL_PUB, DATA, b"y", lab.now)
    assert lab.gw.receive(up, lab.now, "c1") is not None
    assert lab.gw.receive(up, lab.now, "attacker") is None
    assert lab.gw.stats["replay"] == 1
    assert lab.gw.endpoint(CL_PUB) == "c1"  # a replay does not move the endpoint
    assert lab.client.receive(down, lab.now) is not None
    assert lab.client.receive(down, lab.now) is None
    assert lab.client.stats["replay"] == 1


def flips(dg):
    for bit in range(len(dg) * 8):
        b = bytearray(dg)
        b[bit // 8] ^= 1 << (bit % 8)
        yield bytes(b)


def test_flipped_bit_anywhere_dropped_and_counted():
    lab = Lab().connect()
    up = lab.client.seal(DATA, b"payload" * 3, lab.now)
    down = lab.gw.seal(CL_PUB, CONTROL, b"frame", lab.now)
    for bad in flips(up):
        before = total(lab.gw.stats)
        assert lab.gw.receive(bad, lab.now, "x") is None
        assert total(lab.gw.stats) == before + 1
    for bad in flips(down):
        before = total(lab.client.stats)
        assert lab.client.receive(bad, lab.now) is None
        assert total(lab.client.stats) == before + 1
    # Failed forgeries did not poison the replay windows.
    assert lab.gw.receive(up, lab.now, "c1") == (CL_PUB, DATA, b"payload" * 3)
    assert lab.client.receive(down, lab.now) == (CONTROL, b"frame")
    assert lab.gw.endpoint(CL_PUB) == "c1"


def test_flipped_bit_in_handshake_messages():
    lab = Lab()
    lab.begin()
    init = lab.to_gw.pop()[1]
    # all but MAC2, which only a gateway under load checks (its worker, tests/unit/test_cookie.py)
    for bad in flips(init[:-MAC_LEN]):
        before = total(lab.gw.stats)
        assert lab.gw.receive(bad + init[-MAC_LEN:], lab.now, "x") is None
        assert total(lab.gw.stats) == before + 1
    hs = lab.gw.receive(init, lab.now, "c1")
    resp = lab.gw.accept(hs, lab.now, lab.rand(), b"addr")
    for bad in list(flips(resp))[::7]:  # each failure rebuilds the state (DH)
        before = total(lab.client.stats)
        assert lab.client.receive(bad, lab.now) is None
        assert total(lab.client.stats) == before + 1
    assert lab.client.receive(resp, lab.now) == (HANDSHAKE_DONE, b"addr")


def test_buffers_are_accepted():
    lab = Lab().connect()
    up = lab.client.seal(DATA, b"x", lab.now)
    assert lab.gw.receive(memoryview(bytearray(up)), lab.now, "c1") == (CL_PUB, DATA, b"x")
    down = lab.gw.seal(CL_PUB, DATA, b"y", lab.now)
    assert lab.client.receive(bytearray(down), lab.now) == (DATA, b"y")


def test_concurrent_sealers_never_repeat_a_nonce():
    lab = Lab().connect()
    out: list[list[bytes]] = [[], []]

    def run(i):
        for k in range(3000):
            out[i].append(lab.client.seal(DATA, b"%d-%d" % (i, k), lab.now))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counters = {dg[8:16] for dg in out[0] + out[1]}
    assert len(counters) == 6000
    # In counter order: two threads' interleaving can put a datagram further
    # behind the other thread's latest than the replay window reaches.
    for dg in sorted(out[0] + out[1], key=lambda d: int.from_bytes(d[8:16], "little")):
        assert lab.gw.receive(dg, lab.now, "c1") is not None


def test_transport_counter_limit():
    t = Transport(h("k1"), h("k2"), 1, 2, 0.0)
    t._counter = iter([2**64 - 2**13 - 1])
    with pytest.raises(SessionError):
        t.seal(DATA, b"")


# -- rekey -----------------------------------------------------------------


def steady_traffic(lab):
    lab.i = getattr(lab, "i", 0) + 1
    assert lab.send_up(b"u%d" % lab.i) is not None
    assert lab.send_down(b"d%d" % lab.i) is not None


def assert_no_loss(lab):
    assert [p for _, p in lab.gw_got] == [b"u%d" % i for i in range(1, lab.i + 1)]
    assert [p for _, p in lab.cl_got] == [b"d%d" % i for i in range(1, lab.i + 1)]


def test_rekey_on_time_without_loss():
    timing = Timing(rekey_after_s=5.0, reject_after_s=8.0)
    lab = Lab(timing).connect()
    first = lab.client.current
    lab.advance(12.0, traffic=steady_traffic)
    assert lab.client.stats["handshakes"] == lab.gw.stats["handshakes"] == 3
    assert lab.client.current is not first
    assert lab.client.current.created_at > lab.now - 5.0
    assert_no_loss(lab)
    assert total(lab.gw.stats) == total(lab.client.stats) == 0


def test_rekey_with_datagrams_in_flight_across_switch():
    # Datagrams sealed on the old keys arrive after both ends switched.
    lab = Lab(Timing(rekey_after_s=5.0)).connect()
    lab.now += 5.0
    lab.poll()
    old_up = [lab.client.seal(DATA, b"old-u%d" % i, lab.now) for i in range(3)]
    old_down = [lab.gw.seal(CL_PUB, DATA, b"old-d%d" % i, lab.now) for i in range(3)]
    lab.deliver()  # INIT, RESP
    assert lab.client.stats["handshakes"] == 2
    lab.poll()  # the client confirms the new keys
    lab.deliver()
    assert lab.gw.seal(CL_PUB, DATA, b"x", lab.now)[4:8] != old_down[0][4:8]  # switched
    for i, dg in enumerate(old_up):
        assert lab.gw.receive(dg, lab.now, "c1") == (CL_PUB, DATA, b"old-u%d" % i)
    for i, dg in enumerate(old_down):
        assert lab.client.receive(dg, lab.now) == (DATA, b"old-d%d" % i)
    # ... but not forever.
    lab.now += lab.timing.previous_keep_s + 0.1
    lab.poll()
    late = lab.client.seal(DATA, b"new", lab.now)
    assert lab.gw.receive(late, lab.now, "c1") is not None


def test_rekey_on_counter_without_loss():
    lab = Lab(Timing(rekey_after_messages=25)).connect()
    lab.advance(10.0, step=0.05, traffic=steady_traffic)
    assert lab.client.stats["handshakes"] >= 5
    assert_no_loss(lab)


def test_gateway_keeps_old_key_until_client_confirms_new_one():
    lab = Lab(Timing(rekey_after_s=5.0)).connect()
    old_index = lab.client.current.local_index
    lab.now += 5.0
    lab.poll()  # client sends INIT
    init = lab.to_gw.pop()[1]
    hs = lab.gw.receive(init, lab.now, "c1")
    lab.gw.accept(hs, lab.now, lab.rand(), b"")  # the RESP is lost
    down = lab.gw.seal(CL_PUB, DATA, b"still old", lab.now)
    assert int.from_bytes(down[4:8], "little") == old_index
    assert lab.client.receive(down, lab.now) == (DATA, b"still old")
    lab.now += lab.timing.handshake_retry_s
    lab.poll()
    lab.deliver()
    assert lab.client.stats["handshakes"] == 2
    assert lab.send_down(b"new") is not None
    lab.deliver()
    assert lab.cl_got[-1] == (DATA, b"new")


def test_transport_older_than_reject_after_is_not_used():
    lab = Lab(Timing(rekey_after_s=5.0, reject_after_s=8.0)).connect()
    lab.gw_block = True
    lab.advance(7.9)
    assert lab.client.seal(DATA, b"x", lab.now) is not None
    lab.advance(0.2)
    assert not lab.client.established
    assert lab.client.seal(DATA, b"x", lab.now) is None
    assert lab.gw.seal(CL_PUB, DATA, b"x", lab.now) is None
    lab.gw_block = False
    lab.advance(1.1)  # next retry gets through
    assert lab.client.established
    assert lab.send_up(b"back") is not None
    lab.deliver()
    assert lab.gw_got[-1] == (DATA, b"back")


# -- liveness --------------------------------------------------------------


def test_gateway_restart_detected_and_recovered():
    lab = Lab().connect()
    lab.gw = Responder(GW_PRIV, lab.timing)  # restarted: no state
    start = lab.now
    lab.send_up(b"lost")
    lab.deliver()
    assert lab.gw.stats["unknown_index"] == 1
    lab.advance(5.0)
    sent_init = [t for t, dg in lab.up_log if dg[0] == 1]
    assert sent_init and start + lab.timing.dead_after_s <= sent_init[0] < start + lab.timing.dead_after_s + 0.2
    assert lab.client.stats["handshakes"] == 2
    assert lab.send_up(b"resumed") is not None
    assert lab.send_down(b"resumed too") is not None
    lab.deliver()
    assert lab.gw_got == [(DATA, b"resumed")]
    assert lab.cl_got == [(DATA, b"resumed too")]


def test_roaming_follows_latest_authenticated_source():
    lab = Lab().connect()
    lab.addr = "c2"
    lab.send_up(b"from new address")
    lab.deliver()
    assert lab.gw.endpoint(CL_PUB) == "c2"
    old = lab.client.seal(DATA, b"old", lab.now)
    new = lab.client.seal(DATA, b"new", lab.now)
    lab.gw.receive(new, lab.now, "c3")
    lab.gw.receive(old, lab.now, "c2")  # reordered, still authentic: latest wins
    assert lab.gw.endpoint(CL_PUB) == "c2"
    # Keepalives go to the current endpoint.
    lab.now += lab.timing.ack_after_s
    assert [addr for addr, _ in lab.gw.poll(lab.now)] == ["c2"]


def test_keepalive_timers():
    lab = Lab().connect()
    handshakes = lab.client.stats["handshakes"]
    lab.up_log.clear()
    lab.down_log.clear()
    lab.advance(65.0, step=0.1)
    up_times = [t for t, _ in lab.up_log]
    down_times = [t for t, _ in lab.down_log]
    # Idle client: one keepalive every keepalive_s; the gateway answers each
    # after ack_after_s and never on its own.
    assert len(up_times) == 6
    gaps = [b - a for a, b in zip(up_times, up_times[1:])]
    assert all(abs(g - lab.timing.keepalive_s) < 0.15 for g in gaps)
    # The first answers the key-confirmation keepalive sent by connect().
    assert len(down_times) == 7
    assert abs(down_times[0] - 100.0 - lab.timing.ack_after_s) < 0.15
    for u, d in zip(up_times, down_times[1:]):
        assert abs(d - u - lab.timing.ack_after_s) < 0.15
    assert lab.client.stats["handshakes"] == handshakes  # no false dead-peer alarm
    nd = lab.client.next_deadline()
    assert nd is not None and lab.now < nd <= lab.now + lab.timing.keepalive_s


def test_gateway_answers_one_way_traffic_so_client_sees_it_alive():
    lab = Lab().connect()

    def one_way(lab):
        lab.send_up(b"udp")

    lab.advance(20.0, traffic=one_way)
    assert lab.client.stats["handshakes"] == 1


def test_no_keepalive_to_silent_peer():
    lab = Lab().connect()
    lab.advance(2.0)
    lab.to_gw.clear()
    assert lab.gw.poll(lab.now + 1000.0) == []  # and the keys are gone
    assert lab.gw.seal(CL_PUB, DATA, b"x", lab.now + 1000.0) is None


def test_forget():
    lab = Lab().connect()
    up = lab.client.seal(DATA, b"x", lab.now)
    lab.gw.forget(CL_PUB)
    assert lab.gw.peers() == [] and lab.gw.endpoint(CL_PUB) is None
    assert lab.gw.receive(up, lab.now, "c1") is None
    assert lab.gw.stats["unknown_index"] == 1
    lab.gw.forget(CL_PUB)  # idempotent
    lab.begin()
    lab.deliver()
    assert lab.gw.peers() == [CL_PUB]


# -- batch receive -------------------------------------------------------


def _stream(lab, rnd, n=400):
    """What a gateway may see: data, keepalives, replays, flipped bits, cut and
    junk datagrams, a replayed INIT, datagrams from another address."""
    sent = []
    out = []
    init = lab.up_log[0][1] if lab.up_log else None
    for i in range(n):
        r = rnd.random()
        if r < 0.6 or not sent:
            dg = lab.client.seal(rnd.choice([DATA, CONTROL, KEEPALIVE]), b"p%d" % i * rnd.randrange(1, 30), lab.now)
            sent.append(dg)
        elif r < 0.7:
            dg = rnd.choice(sent)
        elif r < 0.8:
            dg = bytearray(rnd.choice(sent))
            dg[rnd.randrange(len(dg))] ^= 1 << rnd.randrange(8)
            dg = bytes(dg)
        elif r < 0.9:
            dg = rnd.choice(sent)[:rnd.randrange(40)]
        elif r < 0.95:
            dg = bytes(rnd.randrange(256) for _ in range(rnd.randrange(80)))
        else:
            dg = init or b""
        out.append((dg, "c2" if rnd.random() < 0.05 else "c1"))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_receive_groups_equals_receive_one_by_one(seed):
    # two labs built from the same inputs hold the same keys
    one, many = Lab().connect(), Lab().connect()
    rnd = random.Random(seed)
    stream = _stream(one, rnd)
    want = [r for r in (one.gw.receive(dg, one.now, a) for dg, a in stream) if r is not None]
    got = []
    i = 0
    while i < len(stream):
        k = rnd.randrange(1, 60)
        got += many.gw.receive_groups(groups(stream[i:i + k]), many.now)
        i += k
    assert [r if type(r) is tuple else ("hs", r.peer_public, r.addr) for r in got] == \
           [r if type(r) is tuple else ("hs", r.peer_public, r.addr) for r in want]
    assert many.gw.stats == one.gw.stats
    assert many.gw.endpoint(CL_PUB) == one.gw.endpoint(CL_PUB)
    # the client side, the same way
    down = []
    for j in range(200):
        dg = one.gw.seal(CL_PUB, DATA, b"d%d" % j, one.now)
        down.append(dg)
        if rnd.random() < 0.2:
            down.append(dg)                      # a duplicate
        if rnd.random() < 0.1:
            down.append(dg[:-1] + bytes([dg[-1] ^ 1]))
    want = [(k, p) for k, p in (r for r in (one.client.receive(dg, one.now) for dg in down) if r is not None)]
    got = [(k, p) for _, k, p in many.client.receive_groups(groups((dg, "gw") for dg in down), many.now)]
    assert got == want and many.client.stats == one.client.stats


def test_the_responders_next_deadline_is_when_its_poll_has_work():
    lab = Lab().connect()
    gw, peer = lab.gw, lab.gw._peers[CL_PUB]
    assert Responder(GW_PRIV).next_deadline() is None              # no peers: nothing to wait for
    gw.poll(lab.now)                                              # whatever the handshake left due
    peer.unacked_since = None
    assert gw.next_deadline() == peer.current.created_at + lab.timing.reject_after_s
    # a datagram from the client starts the ack timer: a keepalive is due ack_after_s later
    assert gw.receive(lab.client.seal(DATA, b"x", lab.now), lab.now, "c1")[1] == DATA
    due = gw.next_deadline()
    assert due == lab.now + lab.timing.ack_after_s
    assert gw.poll(due - 0.001) == []
    assert [addr for addr, _ in gw.poll(due)] == ["c1"]
    assert gw.next_deadline() == peer.current.created_at + lab.timing.reject_after_s
