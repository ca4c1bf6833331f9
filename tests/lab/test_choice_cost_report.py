"""scripts/bench --choice's report: ratios to the one-gateway path per round, and a
target verdict that says when the rounds are too wide to conclude from."""

from tglab.choice_cost import ratios, report


def path(up, down):
    return {"up": up, "down": down, "cpu_up": [0.5] * len(up), "cpu_down": [0.5] * len(down)}


def test_three_against_one_meets_or_misses_and_says_when_it_cannot_conclude():
    res = {"one": path([100, 100, 100], [100, 100, 100]), "one-mkt": path([99, 100, 101], [100, 100, 100]),
           "three": path([97, 96, 98], [60, 130, 90])}
    rs = ratios(res)
    assert set(rs) == {"one-mkt/one", "three/one"} and abs(rs["three/one"]["up"]["x"] - 0.97) < 1e-9
    text = report(res, rs, 3, 5)
    assert "TCP 1 up >= 0.95x: meets (x0.97)" in text
    assert "TCP 1 down >= 0.95x: the median misses, NOT CONCLUSIVE (too wide) (x0.90)" in text
