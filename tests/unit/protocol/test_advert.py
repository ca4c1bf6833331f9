"""Signed adverts: forged, replayed, expired and wrong-key adverts are refused and
counted; a flood of self-signed adverts costs bounded memory and cannot push out a
verified gateway."""

import json
import os

import pytest

from tunnelgate.protocol import advert as A
from tunnelgate.session import public_key

NOW = 1_800_000_000.0


def make(priv: bytes, seq: int = 1, expires: float = NOW + 600, **kw) -> A.Advert:
    base = dict(noise_key=public_key(priv), sign_key=A.sign_public(priv),
                endpoints=("198.18.0.1:51820", "[fd00::1]:51820"), price=2_000_000,
                prices=(("198.18.2.0/24", 1_000_000), ("198.18.2.7/32", 500_000)),
                contract_kb=1000, contract_s=3600, grace_kb=200, grace_s=10,
                methods=("dummy", "cashu:http://198.18.0.9:3338"), seq=seq, expires=int(expires), label="gw1")
    base.update(kw)
    return A.Advert(**base)


@pytest.fixture
def priv():
    return os.urandom(32)


def test_round_trip_and_prices(priv):
    ad = make(priv)
    got = A.decode(A.encode(ad, priv))
    assert got == ad
    assert got.price_for("198.18.2.7") == 500_000
    assert got.price_for("198.18.2.8") == 1_000_000
    assert got.price_for("198.18.3.1") == 2_000_000


def test_signing_key_is_bound_to_the_noise_key(priv):
    assert A.sign_public(priv) == A.sign_public(priv)
    assert A.sign_public(priv) != A.sign_public(os.urandom(32))
    with pytest.raises(ValueError):
        A.encode(make(priv, sign_key=A.sign_public(os.urandom(32))), priv)


def test_tampered_advert_is_a_bad_signature(priv):
    raw = json.loads(A.encode(make(priv), priv))
    raw["b"]["price"] = 1
    book = A.AdvertBook()
    assert book.offer(json.dumps(raw).encode(), "198.18.0.1", NOW) is None
    assert book.counts == {"bad_signature": 1}


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'{"b":{},"s":"x"}', b"\xff" * 100, b"x" * (A.MAX_ADVERT + 1)])
def test_garbage_is_malformed(raw):
    book = A.AdvertBook()
    assert book.offer(raw, "198.18.0.1", NOW) is None
    assert set(book.counts) == {"malformed"}


def test_older_sequence_and_replay_are_refused(priv):
    book = A.AdvertBook()
    assert book.offer(A.encode(make(priv, seq=5), priv), "s", NOW)
    assert book.offer(A.encode(make(priv, seq=5), priv), "s", NOW + 1) is None
    assert book.offer(A.encode(make(priv, seq=4), priv), "s", NOW + 2) is None
    assert book.counts["stale_seq"] == 2
    c = book.offer(A.encode(make(priv, seq=6, price=7), priv), "s", NOW + 3)
    assert c.advert.price == 7 and len(book.candidates) == 1


def test_expired_and_overlong_adverts_are_refused(priv):
    book = A.AdvertBook()
    assert book.offer(A.encode(make(priv, expires=NOW - 1), priv), "s", NOW) is None
    assert book.offer(A.encode(make(priv, expires=NOW + 2 * 86400), priv), "s", NOW) is None
    assert book.counts == {"expired": 2}
    assert book.offer(A.encode(make(priv, expires=NOW + 10), priv), "s", NOW)
    assert book.next_deadline() == NOW + 10
    assert book.expire(NOW + 10) and not book.candidates


def test_wrong_key_is_dropped_at_binding_and_refused_after(priv):
    """A stranger signs an advert naming the real gateway's Noise key with its own key:
    it sits beside the real one, unverified; binding drops it; later ones are refused."""
    noise = public_key(priv)
    forger = os.urandom(32)
    forged = make(forger, noise_key=noise, seq=99, endpoints=("198.18.0.66:51820",))
    book = A.AdvertBook()
    assert book.offer(A.encode(forged, forger), "198.18.0.66", NOW)
    # the forged advert's high sequence does not shadow the real gateway's
    real = book.offer(A.encode(make(priv, seq=1), priv), "198.18.0.1", NOW)
    assert real is not None and not real.verified and len(book.candidates) == 2
    assert book.bind(noise, A.sign_public(priv))
    assert [c.advert.endpoints for c in book.verified()] == [make(priv).endpoints]
    assert len(book.candidates) == 1 and book.counts["wrong_key"] == 1
    assert book.offer(A.encode(make(forger, noise_key=noise, seq=100), forger), "x", NOW + 5) is None
    assert book.counts["wrong_key"] == 2


def test_flood_of_adverts_is_bounded_and_keeps_verified_gateways(priv):
    book = A.AdvertBook(max_candidates=8, max_sources=16)
    book.offer(A.encode(make(priv), priv), "198.18.0.1", NOW)
    book.bind(public_key(priv), A.sign_public(priv))
    keys = [os.urandom(32) for _ in range(200)]
    for i, k in enumerate(keys):
        book.offer(A.encode(make(k), k), f"198.18.1.{i}", NOW + i * 0.01)
    assert len(book.candidates) == 8
    assert len(book._sources) <= 16
    assert book.verified()[0].advert.noise_key == public_key(priv)
    assert book.counts["accepted"] == 201


def test_rate_limit_per_source(priv):
    book = A.AdvertBook(per_source_per_s=1.0, burst=3)
    raws = [A.encode(make(priv, seq=i), priv) for i in range(1, 10)]
    results = [book.offer(r, "198.18.0.1", NOW) for r in raws[:5]]
    assert [r is not None for r in results] == [True, True, True, False, False]
    assert book.counts["rate_limited"] == 2
    assert book.offer(raws[5], "198.18.0.2", NOW) is not None   # another source has its own bucket
    assert book.offer(raws[6], "198.18.0.1", NOW + 1.0) is not None


def test_too_many_verified_candidates_refuses_new_ones():
    book = A.AdvertBook(max_candidates=2)
    privs = [os.urandom(32) for _ in range(3)]
    for i, p in enumerate(privs[:2]):
        book.offer(A.encode(make(p), p), f"s{i}", NOW)
        book.bind(public_key(p), A.sign_public(p))
    assert book.offer(A.encode(make(privs[2]), privs[2]), "s2", NOW) is None
    assert book.counts["too_many"] == 1


def test_big_advert_is_refused_at_encoding(priv):
    many = tuple((f"2001:db8:aaaa:bbbb:cccc:dddd:{i:x}:0/112", i) for i in range(A.MAX_PRICED))
    ad = make(priv, prices=many, methods=tuple("cashu:http://" + "m" * 240 for _ in range(8)))
    with pytest.raises(ValueError, match="fewer prefixes"):
        A.encode(ad, priv)
