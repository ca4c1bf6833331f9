"""MAC1/MAC2 and cookie replies (tunnelgate/cookie.py), the handshake worker's
decisions (daemon/handshakes.py) and the per-source rate limiter (ratelimit.py)."""

import hashlib

from tunnelgate.cookie import REPLY_RAND, SECRET_S, CookieChecker, CookieJar, needs_cookie, source_bytes
from tunnelgate.daemon import handshakes as hsmod
from tunnelgate.ratelimit import TokenBuckets
from tunnelgate.session import RAND_BYTES, Handshake, Initiation, Initiator, Responder, Timing, public_key
from tunnelgate.wire import COOKIE_LEN, INIT_MIN, MAC_LEN


def h(*parts) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


GW_PRIV, CL_PRIV = h("gateway"), h("client")
GW_PUB = public_key(GW_PRIV)
SRC = source_bytes(("198.18.0.2", 40000))
OTHER_PORT = source_bytes(("198.18.0.2", 40001))
OTHER_ADDR = source_bytes(("198.18.0.3", 40000))


class Rand:
    def __init__(self):
        self.n = 0

    def __call__(self, size=RAND_BYTES) -> bytes:
        self.n += 1
        return (h("r", self.n) + h("s", self.n))[:size]


def init_from(jar: CookieJar, now: float, seed: str = "i") -> bytes:
    body = bytes([1, 0, 0, 0]) + h(seed)[:4] + h(seed, 2) * 4     # header + a body the MACs cover
    return jar.add_macs(body, now)


def test_mac1_must_be_keyed_with_the_gateways_public_key():
    checker = CookieChecker(GW_PUB)
    good = init_from(CookieJar(GW_PUB), 0.0)
    assert checker.check_mac1(good)
    assert not checker.check_mac1(init_from(CookieJar(public_key(h("another gateway"))), 0.0))
    flipped = bytearray(good)
    flipped[20] ^= 1                                   # the body the MAC covers
    assert not checker.check_mac1(bytes(flipped))


def test_under_load_an_init_without_mac2_gets_a_cookie_and_the_retry_with_it_is_accepted():
    checker, jar, rand = CookieChecker(GW_PUB), CookieJar(GW_PUB), Rand()
    first = init_from(jar, 10.0)
    assert first[-MAC_LEN:] == bytes(MAC_LEN)          # no cookie yet: MAC2 is zeros
    assert not needs_cookie(checker, first, SRC, 10.0, under_load=False)
    assert needs_cookie(checker, first, SRC, 10.0, under_load=True)
    reply = checker.reply(first, SRC, 10.0, rand(REPLY_RAND))
    assert len(reply) == COOKIE_LEN
    assert jar.consume(reply, 10.5)
    retry = init_from(jar, 11.0, seed="retry")
    assert checker.check_mac1(retry) and checker.check_mac2(retry, SRC, 11.0)
    assert not needs_cookie(checker, retry, SRC, 11.0, under_load=True)


def test_a_cookie_is_bound_to_the_source_address_and_port():
    checker, jar, rand = CookieChecker(GW_PUB), CookieJar(GW_PUB), Rand()
    assert jar.consume(checker.reply(init_from(jar, 0.0), SRC, 0.0, rand(REPLY_RAND)), 0.0)
    retry = init_from(jar, 1.0, seed="retry")
    assert checker.check_mac2(retry, SRC, 1.0)
    assert not checker.check_mac2(retry, OTHER_ADDR, 1.0)
    assert not checker.check_mac2(retry, OTHER_PORT, 1.0)


def test_a_cookie_reply_is_taken_only_for_the_clients_latest_init():
    checker, jar, rand = CookieChecker(GW_PUB), CookieJar(GW_PUB), Rand()
    older = init_from(jar, 0.0, seed="older")
    init_from(jar, 0.0, seed="newer")
    assert not jar.consume(checker.reply(older, SRC, 0.0, rand(REPLY_RAND)), 0.0)
    forged = bytearray(checker.reply(init_from(jar, 0.0, seed="newest"), SRC, 0.0, rand(REPLY_RAND)))
    forged[-1] ^= 1
    assert not jar.consume(bytes(forged), 0.0)
    assert not CookieJar(GW_PUB).consume(bytes(forged), 0.0)     # a client that sent nothing


def test_the_secret_is_replaced_after_two_minutes_and_old_cookies_stop_working():
    checker, jar, rand = CookieChecker(GW_PUB), CookieJar(GW_PUB), Rand()
    assert jar.consume(checker.reply(init_from(jar, 0.0), SRC, 0.0, rand(REPLY_RAND)), 0.0)
    retry = init_from(jar, 1.0, seed="retry")
    assert checker.check_mac2(retry, SRC, SECRET_S - 1)
    assert not checker.check_mac2(retry, SRC, SECRET_S + 1)          # secret expired
    checker.reply(init_from(CookieJar(GW_PUB), 0.0), OTHER_ADDR, SECRET_S + 1, rand(REPLY_RAND))   # new secret
    assert not checker.check_mac2(retry, SRC, SECRET_S + 2)          # cookie of the old secret
    assert jar.consume(checker.reply(init_from(jar, SECRET_S + 2), SRC, SECRET_S + 2, rand(REPLY_RAND)), SECRET_S + 2)
    assert checker.check_mac2(init_from(jar, SECRET_S + 3, seed="again"), SRC, SECRET_S + 3)


def test_responder_drops_an_init_failing_mac1_before_any_key_exchange():
    rand = Rand()
    client = Initiator(CL_PRIV, GW_PUB, Timing())
    gw = Responder(GW_PRIV)
    init = client.begin(5.0, 10**18, rand())
    assert len(init) >= INIT_MIN
    bad = bytearray(init)
    bad[-MAC_LEN - 1] ^= 1                              # MAC1's last byte
    assert gw.receive(bytes(bad), 5.0, "attacker", defer=True) is None
    assert gw.stats["bad_mac1"] == 1
    deferred = gw.receive(init, 5.0, "c", defer=True)
    assert isinstance(deferred, Initiation)
    assert isinstance(gw.handshake(deferred), Handshake)


def test_client_takes_a_cookie_and_its_retry_carries_mac2():
    rand = Rand()
    client = Initiator(CL_PRIV, GW_PUB, Timing())
    gw = Responder(GW_PRIV)
    addr = ("198.18.0.2", 40000)
    init = client.begin(5.0, 10**18, rand())
    reply = gw.cookies.reply(init, source_bytes(addr), 5.0, rand(REPLY_RAND))
    assert client.receive(reply, 5.2) is None and client.stats["cookies"] == 1
    retry = client.poll(6.1, 10**18 + 1, rand())
    assert len(retry) == 1 and gw.cookies.check_mac2(retry[0], source_bytes(addr), 6.1)


class FakeResponder:
    def __init__(self):
        self.cookies = CookieChecker(GW_PUB)
        self.stats = {"bad_mac1": 0}
        self.exchanges = 0

    def handshake(self, init):
        self.exchanges += 1
        return None


def worker(clock):
    sent = []
    resp = FakeResponder()
    return hsmod.Handshakes(resp, lambda hs, now: None, lambda dg, addr: sent.append((dg, addr)), clock), resp, sent


def test_worker_answers_cookies_under_load_and_no_key_exchange_for_them():
    now = [100.0]
    w, resp, sent = worker(lambda: now[0])
    jar = CookieJar(GW_PUB)
    addr = ("198.18.0.2", 40000)
    w.process(Initiation(init_from(jar, 0.0), addr), now[0])     # idle: straight to the key exchange
    assert resp.exchanges == 1 and not sent
    for i in range(hsmod.LOAD_QUEUE):
        w.submit(Initiation(init_from(CookieJar(GW_PUB), 0.0, seed=f"f{i}"), ("198.18.9.9", i)))
    w.process(Initiation(init_from(jar, 0.0, seed="2"), addr), now[0])
    assert resp.exchanges == 1 and len(sent) == 1 and w.status()["cookie_sent"] == 1
    assert jar.consume(sent[0][0], now[0]) and sent[0][1] == addr
    w.process(Initiation(init_from(jar, 0.0, seed="3"), addr), now[0])    # MAC2 right: key exchange
    assert resp.exchanges == 2 and len(sent) == 1


def test_worker_full_queue_drops_and_counts():
    w, _, _ = worker(lambda: 0.0)
    for i in range(hsmod.QUEUE_MAX + 3):
        w.submit(Initiation(b"x", ("198.18.9.9", i)))
    assert w.status()["queue_full"] == 3


def test_worker_rate_limits_key_exchanges_per_source_address():
    w, resp, _ = worker(lambda: 0.0)
    for port in range(hsmod.BURST_PER_SOURCE + 4):
        w.process(Initiation(init_from(CookieJar(GW_PUB), 0.0, seed=str(port)), ("198.18.0.2", port)), 0.0)
    assert resp.exchanges == hsmod.BURST_PER_SOURCE
    assert w.status()["rate_limited"] == 4
    w.process(Initiation(init_from(CookieJar(GW_PUB), 0.0), ("198.18.0.3", 1)), 0.0)   # another source
    assert resp.exchanges == hsmod.BURST_PER_SOURCE + 1


def test_token_buckets_refill_at_the_rate_and_cap_at_the_burst():
    tb = TokenBuckets(rate=10.0, burst=3.0)
    assert [tb.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert tb.allow("a", 0.1) and not tb.allow("a", 0.1)         # one token in 0.1 s
    assert [tb.allow("a", 100.0) for _ in range(4)] == [True, True, True, False]    # capped at the burst
    assert tb.allow("b", 0.0)                                     # keys are independent


def test_token_buckets_table_is_bounded_forgetting_the_least_recently_used():
    tb = TokenBuckets(rate=1.0, burst=1.0, max_keys=3)
    for k in "abc":
        assert tb.allow(k, 0.0)
    assert not tb.allow("a", 0.0)         # a is now the most recently used
    assert tb.allow("d", 0.0)             # evicts b, not a
    assert len(tb) == 3
    assert not tb.allow("a", 0.0)         # a's empty bucket survived
    assert tb.allow("b", 0.0)             # b starts afresh
