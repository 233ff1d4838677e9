"""hf_retain.metrics on hand-computed retention matrices."""

import math

import numpy as np
import pytest

from hf_retain.metrics import (
    RetentionMatrix,
    average_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    learning,
)

# 3 tasks. Rows: after training task 1, 2, 3. Columns: task 1, 2, 3.
SCORES = [
    [0.80, 0.30, 0.20],
    [0.60, 0.90, 0.40],
    [0.50, 0.70, 0.95],
]
BASELINE = [0.10, 0.25, 0.15]


def test_hand_computed_three_tasks():
    R = RetentionMatrix(SCORES, baseline=BASELINE)
    # ACC = (0.50 + 0.70 + 0.95) / 3
    assert average_accuracy(R) == pytest.approx(2.15 / 3)
    # BWT = ((0.50 - 0.80) + (0.70 - 0.90)) / 2 = -0.25
    assert backward_transfer(R) == pytest.approx(-0.25)
    # FWT = ((R[1,2] - R[0,2]) + (R[2,3] - R[0,3])) / 2 = ((0.30 - 0.25) + (0.40 - 0.15)) / 2 = 0.15
    assert forward_transfer(R) == pytest.approx(0.15)
    # forgetting: task1 max(0.80, 0.60) - 0.50 = 0.30; task2 max(0.30, 0.90) - 0.70 = 0.20
    assert forgetting(R) == pytest.approx([0.30, 0.20])
    # learning: task1 0.80 - 0.10, task2 0.90 - 0.30, task3 0.95 - 0.40
    assert learning(R) == pytest.approx([0.70, 0.60, 0.55])
    summary = R.summary()
    assert summary["backward_transfer"] == pytest.approx(-0.25) and "forward_transfer" in summary


def test_forgetting_uses_the_best_earlier_score_not_the_diagonal():
    # Task 1 improves after task 2 (0.9), then drops: forgetting is measured from the peak.
    R = RetentionMatrix([[0.6, 0.0, 0.0], [0.9, 0.8, 0.0], [0.4, 0.8, 0.7]])
    assert forgetting(R) == pytest.approx([0.5, 0.0])
    assert backward_transfer(R) == pytest.approx(((0.4 - 0.6) + (0.8 - 0.8)) / 2)


def test_no_forgetting_positive_backward_transfer():
    R = RetentionMatrix(np.array([[0.5, 0.1], [0.7, 0.9]]))
    assert backward_transfer(R) == pytest.approx(0.2)
    assert forgetting(R) == pytest.approx([-0.2])  # the final score beats every earlier one


def test_lists_and_arrays_are_accepted_directly():
    assert backward_transfer(SCORES) == pytest.approx(-0.25)
    assert average_accuracy(np.array(SCORES)) == pytest.approx(2.15 / 3)


def test_loss_matrices_flip_signs_so_negative_bwt_still_means_forgetting():
    losses = [[1.0, 3.0], [1.5, 0.8]]  # task 1's loss rose from 1.0 to 1.5: forgetting
    R = RetentionMatrix(losses, baseline=[3.2, 3.4], higher_is_better=False)
    assert backward_transfer(R) == pytest.approx(-0.5)
    assert forgetting(R) == pytest.approx([0.5])
    assert forward_transfer(R) == pytest.approx(3.4 - 3.0)  # task 2's loss fell before it was trained
    assert average_accuracy(R) == pytest.approx(1.15)  # raw units


def test_forward_transfer_needs_the_baseline_row():
    with pytest.raises(ValueError, match="baseline row"):
        forward_transfer(RetentionMatrix(SCORES))


def test_bad_shapes_and_missing_entries_are_reported():
    with pytest.raises(ValueError, match="square"):
        RetentionMatrix([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    with pytest.raises(ValueError, match="one score per task"):
        RetentionMatrix(SCORES, baseline=[0.1])
    with pytest.raises(ValueError, match="at least 2 tasks"):
        backward_transfer(RetentionMatrix([[0.5]]))
    # NaN marks a skipped evaluation: fine where unused (upper triangle for BWT), an error where needed.
    partial = RetentionMatrix([[0.8, math.nan], [0.6, 0.9]])
    assert backward_transfer(partial) == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="NaN"):
        forward_transfer(RetentionMatrix([[0.8, math.nan], [0.6, 0.9]], baseline=[0.1, 0.1]))


def test_json_round_trip_keeps_nan_baseline_names_and_direction(tmp_path):
    R = RetentionMatrix([[0.8, math.nan], [0.6, 0.9]], baseline=[0.1, 0.2], task_names=["prose", "code"],
                        higher_is_better=False)
    back = RetentionMatrix.from_json(R.to_json())
    assert np.array_equal(back.scores, R.scores, equal_nan=True)
    assert back.baseline.tolist() == [0.1, 0.2] and back.task_names == ["prose", "code"]
    assert back.higher_is_better is False
    path = R.save(tmp_path / "matrix.json")
    assert RetentionMatrix.load(path).to_dict() == R.to_dict()


def test_plots_are_png_files(tmp_path):
    R = RetentionMatrix(SCORES, baseline=BASELINE, task_names=["a", "b", "c"])
    for path in (R.plot_heatmap(tmp_path / "heat.png"), R.plot_learning_forgetting(tmp_path / "lf.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_public_names_are_exported():
    import hf_retain

    assert hf_retain.RetentionMatrix is RetentionMatrix
    assert hf_retain.backward_transfer is backward_transfer and hf_retain.forward_transfer is forward_transfer
    assert hf_retain.average_accuracy is average_accuracy and hf_retain.forgetting is forgetting
