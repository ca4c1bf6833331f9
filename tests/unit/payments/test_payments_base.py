import threading

import pytest

from tunnelgate.payments.base import Journal, Terms, Verdict, msat_to_sat_ceil, proof_key


def test_terms_rejects_floats_and_negatives():
    with pytest.raises(TypeError):
        Terms("c", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Terms("c", -1)
    with pytest.raises(ValueError):
        Terms("", 1)
    assert Terms("c", 1001).amount_sat == 2
    assert Terms("c", 1000).amount_sat == 1
    assert Terms("c", 0).amount_sat == 0


def test_verdict_status_checked():
    with pytest.raises(ValueError):
        Verdict("maybe")
    assert Verdict("pending").ok and not Verdict("invalid").ok


def test_msat_ceil():
    assert [msat_to_sat_ceil(x) for x in (0, 1, 999, 1000, 1001)] == [0, 1, 1, 1, 2]


def test_proof_key_stable_and_distinct():
    assert proof_key("x", "a", "b") == proof_key("x", "a", "b")
    assert proof_key("x", "ab", "") != proof_key("x", "a", "b")


def test_journal_insert_update_credit(tmp_path):
    j = Journal(tmp_path / "sub" / "j.sqlite")
    rec, new = j.insert("k1", "c1", "P", "t", 5000, "pending", detail={"a": 1})
    assert new and rec.status == "pending" and rec.detail == {"a": 1}
    again, new2 = j.insert("k1", "c2", "Q", "t", 1, "confirmed")
    assert not new2 and again.contract_id == "c1"
    assert j.credit("P") == 0
    j.update("k1", status="confirmed", detail={"b": 2})
    assert j.get("k1").detail == {"a": 1, "b": 2}
    # confirmed never goes back to pending
    assert j.update("k1", status="pending").status == "confirmed"
    assert j.credit("P") == 5000
    j.mark_applied("c1")
    assert j.credit("P") == 0
    assert j.unapplied() == []
    j.close()


def test_journal_for_contract_prefers_live(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    j.insert("bad", "c1", "P", "t", 1, "invalid", "nope")
    assert j.for_contract("c1").key == "bad"
    j.insert("good", "c1", "P", "t", 2, "pending")
    assert j.for_contract("c1").key == "good"
    assert j.for_contract("zz") is None


def test_journal_survives_reopen_wal(tmp_path):
    p = tmp_path / "j.sqlite"
    j = Journal(p)
    j.insert("k", "c", "P", "t", 7, "confirmed")
    assert j._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    j.close()
    j2 = Journal(p)
    assert j2.get("k").amount_msat == 7 and j2.credit("P") == 7
    assert j2.take_credit("P") == (7, ["c"])
    assert j2.take_credit("P") == (0, [])


def test_journal_accounts(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    assert j.account("c", "b") is None
    assert j.set_account("c", "b", "addr1") == "addr1"
    assert j.set_account("c", "b", "addr2") == "addr1"


def test_journal_threadsafe(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    wins = []

    def claim(i):
        _, new = j.insert("same", f"c{i}", "P", "t", 1, "pending")
        wins.append(new)

    ts = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert wins.count(True) == 1


def test_journal_prepaid_credit_once_per_ref_and_durable(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    assert j.credit_balance("p") == 0
    assert j.add_credit("p", 300, "surplus:c1", "c1") == 300
    assert j.add_credit("p", 300, "surplus:c1", "c1") == 300        # replayed: once
    assert j.spend_credit("p", 100, "c2") == 200
    assert j.spend_credit("p", 100, "c2") == 200                    # same contract: once
    assert j.spend_credit("p", 500, "c3") is None and j.credit_balance("p") == 200
    assert j.paid_from_credit("c2") and not j.paid_from_credit("c3")
    j.close()
    j = Journal(tmp_path / "j.sqlite")
    assert j.credit_balance("p") == 200 and j.credit_balances() == {"p": 200}


def test_journal_settle_applies_and_credits_in_one_go(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    j.insert("k1", "c1", "p", "dummy", 5000, "confirmed")
    assert [r.contract_id for r in j.unapplied("p")] == ["c1"]
    assert j.settle("c1", "p", 4000, "surplus:c1", "prepay") == 4000
    assert j.unapplied("p") == [] and j.credit("p") == 0
    assert j.settle("c1", "p", 4000, "surplus:c1", "prepay") == 4000  # a second settle: nothing more


def test_batched_group_commit_isolates_a_failing_call(tmp_path):
    import asyncio as _asyncio
    j = Journal(tmp_path / "journal.db")

    def boom():
        j.insert("kx", "cx", "p", "dummy", 5, "confirmed")
        raise ValueError("no")

    async def main():
        calls = [j.batched(j.insert, f"k{i}", f"c{i}", "p", "dummy", 10 + i, "confirmed") for i in range(20)]
        calls.insert(5, j.batched(boom))
        calls.append(j.batched(j.settle, "c3", "p", 7, "surplus:c3", "x"))
        return await _asyncio.gather(*calls, return_exceptions=True)

    out = _asyncio.run(main())
    assert isinstance(out[5], ValueError)
    recs = [r for i, r in enumerate(out[:-1]) if i != 5]
    assert [r[0].contract_id for r in recs] == [f"c{i}" for i in range(20)] and all(r[1] for r in recs)
    assert out[-1] == 7                                 # the balance after the settle
    assert j.get("kx") is None                          # the failing call was undone alone
    assert j.for_contract("c3").applied and j.credit_balance("p") == 7
    assert len(j.records()) == 20
