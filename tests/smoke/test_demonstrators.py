"""Scripted demonstrators succeed often enough to be worth recording (robosuite, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("robosuite")

from script.dataset.generate_robomimic import MAX_DEMO_STEPS, demonstrator_success  # noqa: E402


def test_lift_demonstrator_success_rate() -> None:
    """>= 8 of 10 seeded lift episodes succeed, within the time limit, with human-like variation on."""
    episodes = demonstrator_success("lift", seeds=range(10))
    successes = sum(ep.success for ep in episodes)
    assert successes >= 8, f"lift demonstrator solved only {successes}/10"
    lengths = [len(ep) for ep in episodes if ep.success]
    assert max(lengths) <= MAX_DEMO_STEPS["lift"]
    # variation: the demos are not copies of each other
    assert len(set(lengths)) > 3
    first_actions = np.stack([ep.actions[5] for ep in episodes])
    assert first_actions[:, :3].std(axis=0).max() > 0.05


@pytest.mark.slow
def test_can_demonstrator_success_rate() -> None:
    """>= 8 of 10 seeded can episodes succeed (slow: ~200 steps per episode)."""
    episodes = demonstrator_success("can", seeds=range(10))
    successes = sum(ep.success for ep in episodes)
    assert successes >= 8, f"can demonstrator solved only {successes}/10"
