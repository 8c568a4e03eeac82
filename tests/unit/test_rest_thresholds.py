"""ReST's Improve thresholds against hand-computed numbers: quantiles of the Grow rewards or absolute values."""

from __future__ import annotations

import pytest

from kuberlhf.config import load_config
from kuberlhf.errors import DataError
from kuberlhf.stages.rest.config import RestConfig
from kuberlhf.stages.rest.improve import keep, threshold_of


def config(*overrides):
    return load_config(RestConfig, None, ["output_dir=/tmp/rest", "data.train=demo://prompts?n=4", *overrides])


def samples(rewards):
    return [{"prompt": "p", "response": f"r{i}", "reward": r} for i, r in enumerate(rewards)]


def test_quantile_thresholds_rise_and_the_kept_set_shrinks():
    cfg = config("improve.thresholds=[0.5,0.8]")
    rewards = [float(r) for r in range(10)]  # numpy's linear quantile: 0.5 -> 4.5, 0.8 -> 7.2
    assert threshold_of(rewards, cfg, 1) == pytest.approx(4.5)
    assert threshold_of(rewards, cfg, 2) == pytest.approx(7.2)
    first, t1 = keep(samples(rewards), cfg, 1)
    second, t2 = keep(samples(rewards), cfg, 2)
    assert [s["reward"] for s in first] == [5, 6, 7, 8, 9] and [s["reward"] for s in second] == [8, 9]
    assert t1 < t2


def test_absolute_thresholds_keep_what_reaches_them_and_refuse_keeping_nothing():
    cfg = config("improve.threshold_kind=absolute", "improve.thresholds=[1.0,2.5,9.0]")
    kept, t = keep(samples([0.5, 1.0, 2.0, 3.0]), cfg, 2)
    assert t == 2.5 and [s["reward"] for s in kept] == [3.0]
    assert [s["reward"] for s in keep(samples([0.5, 1.0, 2.0, 3.0]), cfg, 1)[0]] == [1.0, 2.0, 3.0]  # at: kept
    with pytest.raises(DataError, match=r"'improve.thresholds': step 3's threshold 9 keeps none of the 4 samples "
                                        r"\(highest reward 3\)"):
        keep(samples([0.5, 1.0, 2.0, 3.0]), cfg, 3)
