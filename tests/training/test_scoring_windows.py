"""The full-split scoring windows: every validation token with enough context scored once."""

from __future__ import annotations

import numpy as np
import pytest

from spark_jobs.training.evaluation import first_scores, scored_target_ids, scoring_windows

W = 16  # so a window every W/8 = 2 tokens


@pytest.mark.parametrize(("model", "offsets"), [("gpt", range(1, W + 1)), ("mlp", range(W, W + 1))])
@pytest.mark.parametrize("lengths", [[W + 1], [100], [W + 1 + W], [37, W, 250, W + 2]])
def test_each_token_is_scored_once_to_the_end_of_its_range(model, offsets, lengths):
    ranges = [np.arange(n, dtype=np.int32) + 1000 * (i + 1) for i, n in enumerate(lengths)]
    windows, which, starts = scoring_windows(ranges, W, offsets)
    assert windows.shape[1] == W + 1
    for row, (index, start) in enumerate(zip(which, starts, strict=True)):
        np.testing.assert_array_equal(windows[row].numpy(), ranges[index][start : start + W + 1])
    mask = first_scores(which, starts, offsets)
    scored = scored_target_ids(windows, mask, which, offsets)
    expected = [r[offsets.start :].tolist() for r in ranges if len(r) >= W + 1]
    assert scored == expected  # every predictable token once, in order, the tail included
    # a window every W/8 tokens (the mlp: every token), plus one ending at each range's end
    step = 1 if model == "mlp" else W // 8
    assert len(windows) <= sum(-(-(len(r) - W) // step) + 1 for r in ranges if len(r) >= W + 1)
    # every target has at least 7/8 of a window of context, but in a range's first window
    used = [offsets[i] for row in range(len(mask)) if starts[row] > 0 for i in np.flatnonzero(mask[row])]
    assert all(offset >= W - step for offset in used)


def test_ranges_shorter_than_a_window_give_nothing():
    windows, which, starts = scoring_windows([np.arange(W, dtype=np.int32)], W, range(1, W + 1))
    assert windows.shape == (0, W + 1) and len(which) == len(starts) == 0
