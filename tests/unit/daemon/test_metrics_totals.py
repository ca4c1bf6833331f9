"""Prometheus counters never go down although the engines remember only recent contracts."""

from tunnelgate.daemon.metrics import Totals


def test_a_contract_leaving_the_window_keeps_its_values_in_the_total():
    t = Totals()
    assert t.update({"a": ("p", (10, 100)), "b": ("p", (5, 50))}) == {"p": [15, 150]}
    # a's counters grew; b left the engine's window of remembered contracts
    assert t.update({"a": ("p", (10, 120))}) == {"p": [15, 170]}
    # a leaves too, a new one comes for another peer
    assert t.update({"c": ("q", (1, 1))}) == {"p": [15, 170], "q": [1, 1]}
    assert t.update({}) == {"p": [15, 170], "q": [1, 1]}
