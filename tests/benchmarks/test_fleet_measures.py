"""``bench fleet``'s arithmetic: the goodput estimator and the token model's bound."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.bench_fleet import model_bound, tokens_per_s
from streamsynth.local.serving import ServingConfig


def _staircase(rate: float, period: float, t_from: float, t_to: float) -> list[tuple[float, int]]:
    """Reads every 0.25 s of a count that rises by ``rate x period`` once per period
    (a batch of equal answers ending together), as the simulator's /stats shows it."""
    points = []
    t = t_from
    while t <= t_to:
        points.append((t, int(t // period) * int(rate * period)))
        t += 0.25
    return points


@pytest.mark.parametrize("start", [0.1, 1.0, 2.0, 3.0])
def test_slope_through_a_staircase_is_near_its_mean_rate(start: float) -> None:
    # A 20 s window of 3.7 s steps: a difference of its end reads is off by up to one
    # step (about 18 %) depending on where the window falls; the slope is not.
    points = _staircase(36_000.0, 3.7, start, start + 20.0)
    difference = (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])
    slope = tokens_per_s(points)
    assert slope == pytest.approx(36_000.0, rel=0.04)
    assert abs(slope - 36_000.0) <= abs(difference - 36_000.0) + 1.0


def test_slope_of_a_steady_count_is_its_rate() -> None:
    points = [(t / 4, int(1_000 * t / 4)) for t in range(40)]
    assert tokens_per_s(points) == pytest.approx(1_000.0, rel=0.01)
    assert tokens_per_s(points[:1]) != tokens_per_s(points[:1])  # nan: one read says nothing


def test_bound_without_prefill_is_the_decode_capacity() -> None:
    free = ServingConfig(replicas=4, max_num_seqs=256, prefill_s_per_token=0.0)
    assert model_bound(free, 139.0, 128.0) == pytest.approx(4 * 256 / free.step_s(256))


def test_bound_counts_the_decode_time_lost_to_prefill() -> None:
    cfg = ServingConfig(replicas=1, max_num_seqs=256)
    bound = model_bound(cfg, 139.0, 128.0)
    # At that rate, each second holds bound / 128 prefills of 139 tokens and the rest
    # is decoding at the full batch's speed.
    prefill_s = bound / 128.0 * 139.0 * cfg.prefill_s_per_token
    assert bound == pytest.approx((1.0 - prefill_s) * cfg.decode_capacity_tokens_per_s())
    assert model_bound(cfg, 100.0, 128.0) > bound > model_bound(cfg, 139.0, 64.0)
