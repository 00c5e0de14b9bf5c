"""The exact stream under a piecewise-constant p (data.inject_fraction=auto): counts, state, resume."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from dist_forget.data.mixture import MixedStream, MixtureConfig, Schedule, pretrain_count
from dist_forget.errors import UserError

SEGMENTS = [(0, 0.01), (160, 0.037), (320, 0.2), (333, 0.0001), (480, 0.05)]


def _schedule() -> Schedule:
    s = Schedule(Fraction(0))
    for start, p in SEGMENTS:
        s.set(start, Fraction(p).limit_denominator(10**6))
    return s


def test_the_count_follows_the_sum_of_p_and_never_exceeds_it():
    s, k = _schedule(), np.arange(0, 2000)
    counts = s.count(k)
    p_of = np.array([float(s.fraction_at(int(i))) for i in k])
    ideal = np.concatenate([[0.0], np.cumsum(p_of)])[:-1]  # sum of p over the first k sequences
    rounding = sum(1 / f.denominator for f in s.fracs[1:])  # < 1/den_j lost at each change of p
    assert np.all(counts <= ideal + 1e-9) and np.all(counts > ideal - 1 - rounding - 1e-9)
    assert np.all(np.diff(counts) >= 0) and np.all(np.diff(counts) <= 1)
    assert [s.count(int(i)) for i in k[::97]] == counts[::97].tolist()  # scalar and array agree
    # one sequence past a change of p, the remainder carried: at 160, p = 0.01 gave 1.6 -> 1, 0.6 carried
    assert s.count(160) == 1 and s.count(160 + 11) == 1 + int(0.6 + 11 * 0.037)


def test_a_constant_p_is_floor_k_p():
    s, k = Schedule(Fraction(1, 100)), np.arange(0, 5000)
    assert np.array_equal(s.count(k), pretrain_count(k, Fraction(1, 100)))


def test_schedule_round_trips_and_refuses_an_edited_one():
    s = _schedule()
    again = Schedule.from_list(json.loads(json.dumps(s.to_list())))
    assert again.to_list() == s.to_list() and np.array_equal(
        again.count(np.arange(900)), s.count(np.arange(900))
    )
    for bad in ([], [[5, "1/100"]], [[0, "1/100"], [0, "1/10"]], [[0, "3/2"]], [[0, 0.01, 1]]):
        with pytest.raises(ValueError):
            Schedule.from_list(bad)
    with pytest.raises(ValueError, match="rewrite"):
        s.set(100, Fraction(1, 10))


def test_the_mean_p_is_sequence_weighted():
    s = _schedule()
    assert s.mean(160) == pytest.approx(0.01)
    assert s.mean(320) == pytest.approx((160 * 0.01 + 160 * 0.037) / 320)
    assert s.mean(0) == pytest.approx(0.01)


def _auto(tiny_data) -> MixtureConfig:
    return MixtureConfig(target=str(tiny_data.code), pretrain=str(tiny_data.english),
                         inject_fraction="auto", max_forgetting=0.5)  # fmt: skip


def _run(stream: MixedStream, plan: dict[int, float], steps: int, b: int) -> list[tuple]:
    out = []
    for step in range(steps):
        if step in plan:
            stream.set_inject_fraction(plan[step])
        batch = stream.next_batch(b)
        out.append((batch.input_ids.numpy().copy(), batch.is_pretrain.numpy().copy()))
    return out


def test_stream_with_a_schedule_injects_exactly_and_resumes(tiny_data):
    plan, b = {0: 0.1, 3: 0.5, 5: 0.02, 7: 0.3}, 4
    stream = MixedStream(_auto(tiny_data))
    batches = _run(stream, plan, 10, b)
    injected = np.concatenate([pre for _, pre in batches])
    assert stream.schedule.to_list()[0] == [0, "1/10"] and len(stream.schedule.starts) == 4
    # after every k sequences exactly what the schedule implies
    assert np.cumsum(injected).tolist() == [stream.schedule.count(k) for k in range(1, 41)]
    assert injected[:12].sum() == 1 and injected[12:20].sum() == 4  # 1.2 -> 1, then 0.2 + 8 x 0.5 -> 4
    # stop after step 5, restore into a fresh stream: the same batches
    first = MixedStream(_auto(tiny_data))
    _run(first, plan, 6, b)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = MixedStream(_auto(tiny_data))
    resumed.load_state_dict(state)
    rest = _run(resumed, {k - 6: v for k, v in plan.items() if k >= 6}, 4, b)
    for (ids, pre), (ids2, pre2) in zip(batches[6:], rest):
        assert np.array_equal(ids, ids2) and np.array_equal(pre, pre2)


def test_stream_state_refuses_a_schedule_that_does_not_fit(tiny_data):
    stream = MixedStream(_auto(tiny_data))
    _run(stream, {0: 0.1, 2: 0.3}, 3, 4)
    state = stream.state_dict()
    ahead = dict(state, schedule=state["schedule"] + [[99, "1/2"]])  # a segment past the position
    with pytest.raises(UserError, match="does not fit"):
        MixedStream(_auto(tiny_data)).load_state_dict(ahead)
    with pytest.raises(UserError, match="edited"):
        MixedStream(_auto(tiny_data)).load_state_dict(dict(state, schedule=[[3, "1/2"]]))
    constant = MixtureConfig(target=str(tiny_data.code), pretrain=str(tiny_data.english), inject_fraction=0.1)
    with pytest.raises(ValueError, match="auto"):
        MixedStream(constant).set_inject_fraction(0.2)
