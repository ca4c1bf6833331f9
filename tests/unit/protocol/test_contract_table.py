import pytest

from tunnelgate.protocol.contract import TABLE, Ev, State, TransitionError, next_state

S, E = State, Ev
# Every (state, event) pair and its defined outcome; None = TransitionError.
EXPECTED = {
    S.PROPOSED: {E.ACCEPT_ACTIVE: S.GRACE, E.ACCEPT_WAIT: S.ACCEPTED, E.REJECT: S.REJECTED,
                 E.NO_DEAL: S.NO_DEAL, E.WITHDRAW: S.NO_DEAL},
    S.ACCEPTED: {E.ACTIVATE: S.GRACE, E.PAID: S.PAID, E.PAYMENT_FAILED: S.ACCEPTED,
                 E.REVOKE: S.REVOKED, E.EXPIRE: S.EXPIRED},
    S.GRACE: {E.PAID: S.PAID, E.PAYMENT_FAILED: S.GRACE, E.EXHAUST: S.EXHAUSTED,
              E.EXPIRE: S.EXPIRED, E.REVOKE: S.REVOKED},
    S.PAID: {E.ACTIVATE: S.PAID, E.PAID: S.PAID, E.EXHAUST: S.EXHAUSTED, E.EXPIRE: S.EXPIRED,
             E.REVOKE: S.REVOKED},
    S.REJECTED: {},
    S.NO_DEAL: {},
    S.EXHAUSTED: {E.PAID: S.EXHAUSTED, E.PAYMENT_FAILED: S.EXHAUSTED},
    S.EXPIRED: {E.PAID: S.EXPIRED, E.PAYMENT_FAILED: S.EXPIRED},
    S.REVOKED: {E.PAID: S.REVOKED, E.PAYMENT_FAILED: S.REVOKED},
}


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
@pytest.mark.parametrize("event", list(Ev), ids=lambda e: e.value)
def test_every_pair(state, event):
    want = EXPECTED[state].get(event)
    if want is None:
        with pytest.raises(TransitionError) as ei:
            next_state(state, event)
        assert state.value in str(ei.value) and event.value in str(ei.value)
    else:
        assert next_state(state, event) is want


def test_table_has_nothing_untested():
    listed = {(s, e) for s, evs in EXPECTED.items() for e in evs}
    assert listed == set(TABLE)
