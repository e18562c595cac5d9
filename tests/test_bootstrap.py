import math
from collections import Counter

import pytest

from agefuse.bootstrap import RebalancedBootstrapSampler, StopRule, target_shares

GROUPS = ["20-29"] * 1000 + ["70+"] * 100 + ["0-2"] * 10


def drawn_shares(sampler):
    counts = Counter(sampler.groups[i] for i in sampler)
    return {g: counts[g] / len(sampler) for g in set(sampler.groups)}


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_group_frequencies_match_the_tempered_target(alpha):
    sampler = RebalancedBootstrapSampler(GROUPS, alpha=alpha, seed=1, round_size=40_000)
    target = target_shares(GROUPS, alpha)
    for group, share in drawn_shares(sampler).items():
        sigma = math.sqrt(target[group] * (1 - target[group]) / 40_000)
        assert abs(share - target[group]) < 4 * sigma, (group, share, target[group])


def test_alpha_limits():
    plain = target_shares(GROUPS, 0.0)
    assert plain == pytest.approx({"20-29": 1000 / 1110, "70+": 100 / 1110, "0-2": 10 / 1110})
    assert target_shares(GROUPS, 1.0) == pytest.approx({g: 1 / 3 for g in plain})
    with pytest.raises(ValueError, match="alpha"):
        RebalancedBootstrapSampler(GROUPS, alpha=1.5)


def test_two_ranks_draw_disjoint_shares_that_make_the_whole_round():
    whole = RebalancedBootstrapSampler(GROUPS, alpha=0.5, seed=3, round_size=1001)
    ranks = [RebalancedBootstrapSampler(GROUPS, alpha=0.5, seed=3, round_size=1001, rank=r, world_size=2)
             for r in (0, 1)]
    for sampler in (whole, *ranks):
        sampler.set_round(4)
    draw = whole.draw().tolist()
    shares = [list(r) for r in ranks]
    assert [len(s) for s in shares] == [len(r) for r in ranks] == [501, 500]
    # disjoint positions of one draw: interleaving the shares gives the draw back exactly
    assert [shares[p % 2][p // 2] for p in range(1001)] == draw


def test_same_seed_same_draw_and_rounds_differ():
    a = RebalancedBootstrapSampler(GROUPS, alpha=0.5, seed=9)
    b = RebalancedBootstrapSampler(GROUPS, alpha=0.5, seed=9)
    assert list(a) == list(b)
    b.set_round(1)
    assert list(a) != list(b)
    assert list(a) != list(RebalancedBootstrapSampler(GROUPS, alpha=0.5, seed=10))


def test_sampler_state_round_trips_and_refuses_other_settings():
    a = RebalancedBootstrapSampler(GROUPS, alpha=0.5, seed=9)
    a.set_round(7)
    b = RebalancedBootstrapSampler(GROUPS, alpha=0.5, seed=9)
    b.load_state_dict(a.state_dict())
    assert list(a) == list(b)
    with pytest.raises(ValueError, match="alpha=0.5"):
        RebalancedBootstrapSampler(GROUPS, alpha=0.2, seed=9).load_state_dict(a.state_dict())


def test_round_record_counts_the_draw():
    record = RebalancedBootstrapSampler(GROUPS, alpha=1.0, seed=0).round_record()
    assert sum(record["drawn"].values()) == record["size"] == len(GROUPS)
    assert record["target"] == pytest.approx({"0-2": 1 / 3, "20-29": 1 / 3, "70+": 1 / 3}, abs=1e-4)


def run_rule(losses, **kw):
    rule = StopRule(**kw)
    for i, loss in enumerate(losses):
        if rule.update(loss):
            return i, rule
    return None, rule


def test_stop_rule_waits_for_k_stable_rounds():
    stop_at, rule = run_rule([5.0, 4.0, 3.5, 3.30, 3.31, 3.305, 3.2], k=3, epsilon=0.01)
    assert stop_at == 5 and rule.stable() and "stable" in rule.reason()
    assert rule.best_round == 3 and rule.best_loss == 3.30


def test_stop_rule_keeps_going_while_the_loss_falls_then_hits_the_maximum():
    stop_at, rule = run_rule([10 / (i + 1) for i in range(8)], k=3, epsilon=0.01, max_rounds=6)
    assert stop_at == 5 and not rule.stable() and "maximum" in rule.reason()
    assert rule.best_round == 5


def test_stop_rule_refuses_nan_and_bad_settings():
    with pytest.raises(ValueError, match="nan"):
        StopRule().update(float("nan"))
    with pytest.raises(ValueError):
        StopRule(k=1)
