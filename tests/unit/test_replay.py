import random

from tunnelgate.replay import WINDOW, ReplayWindow
from tunnelgate.wire import REJECT_AFTER_MESSAGES


def accept(w: ReplayWindow, n: int) -> bool:
    return w.update(n)


def test_window_is_large_enough():
    assert WINDOW >= 2048


def test_in_order_and_duplicates():
    w = ReplayWindow()
    for n in range(10_000):
        assert accept(w, n)
        assert not w.update(n)


def test_counter_zero_once():
    w = ReplayWindow()
    assert w.update(0)
    assert not w.update(0)


def test_out_of_order_within_window():
    w = ReplayWindow()
    order = list(range(WINDOW))
    random.Random(1).shuffle(order)
    for n in order:
        assert accept(w, n), n
    for n in order:
        assert not w.update(n)


def test_window_boundary():
    w = ReplayWindow()
    top = 5 * WINDOW + 17
    assert accept(w, top)
    assert accept(w, top - WINDOW)
    assert not accept(w, top - WINDOW)
    assert not w.update(top - WINDOW - 1)


def test_too_old():
    w = ReplayWindow()
    assert accept(w, 100_000)
    assert not w.update(100_000 - WINDOW - 1)
    assert not accept(w, 0)


def test_far_jump_forgets_old_bits():
    w = ReplayWindow()
    for n in range(300):
        assert accept(w, n)
    assert accept(w, 10**12)
    # Everything in the new window below the top is fresh, even counters whose
    # ring slots held bits from before the jump.
    for n in range(10**12 - WINDOW + 1, 10**12, 61):
        assert accept(w, n), n
    assert not accept(w, 299)


def test_jump_by_less_than_ring_clears_only_passed_words():
    w = ReplayWindow()
    for n in range(0, 4096, 3):
        assert accept(w, n)
    assert accept(w, 4096 + 640)
    # Still inside the window and already seen: must stay rejected.
    assert not accept(w, 4095)
    assert accept(w, 4094)  # 4094 % 3 != 0, never seen


def test_reject_after_messages():
    w = ReplayWindow()
    assert not w.update(REJECT_AFTER_MESSAGES)
    assert not w.update(2**64 - 1)
    assert accept(w, REJECT_AFTER_MESSAGES - 1)
