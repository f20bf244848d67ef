"""Metric functions against values computed by hand."""

import numpy as np
import pytest

from avtca_jax import metrics

# 3 classes, 10 samples. Confusion matrix (rows true, columns predicted):
#   true 0: [3, 1, 0]   recall 3/4,  precision 3/4   F1 3/4
#   true 1: [1, 2, 1]   recall 2/4,  precision 2/3   F1 2*(2/3)(1/2)/(2/3+1/2) = 4/7
#   true 2: [0, 0, 2]   recall 2/2,  precision 2/3   F1 2*(2/3)(1)/(5/3) = 4/5
LABELS = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
PREDICTIONS = [0, 0, 0, 1, 0, 1, 1, 2, 2, 2]


def test_confusion_matrix():
  np.testing.assert_array_equal(metrics.confusion_matrix(LABELS, PREDICTIONS, 3),
                                [[3, 1, 0], [1, 2, 1], [0, 0, 2]])


def test_accuracy_uar_macro_f1_by_hand():
  assert metrics.accuracy(LABELS, PREDICTIONS) == pytest.approx(7 / 10)
  assert metrics.unweighted_average_recall(LABELS, PREDICTIONS, 3) == pytest.approx((3 / 4 + 2 / 4 + 1) / 3)
  assert metrics.macro_f1(LABELS, PREDICTIONS, 3) == pytest.approx((3 / 4 + 4 / 7 + 4 / 5) / 3)


def test_per_class_precision_recall_f1():
  stats = metrics.per_class(metrics.confusion_matrix(LABELS, PREDICTIONS, 3))
  np.testing.assert_allclose(stats["precision"], [3 / 4, 2 / 3, 2 / 3])
  np.testing.assert_allclose(stats["recall"], [3 / 4, 1 / 2, 1])
  np.testing.assert_allclose(stats["f1"], [3 / 4, 4 / 7, 4 / 5])
  np.testing.assert_array_equal(stats["support"], [4, 4, 2])


def test_uar_differs_from_accuracy_on_imbalanced_data():
  # 8 of class 0 all right, 2 of class 1 all wrong: accuracy 0.8, UAR 0.5, F1: class 0 = 2*0.8*1/1.8, class 1 = 0.
  labels = [0] * 8 + [1] * 2
  predictions = [0] * 10
  assert metrics.accuracy(labels, predictions) == pytest.approx(0.8)
  assert metrics.unweighted_average_recall(labels, predictions, 2) == pytest.approx(0.5)
  assert metrics.macro_f1(labels, predictions, 2) == pytest.approx((2 * 0.8 / 1.8 + 0.0) / 2)


def test_classes_absent_from_labels_and_predictions_are_left_out():
  # 8 classes declared, only 0 and 1 occur: the means run over those two.
  assert metrics.unweighted_average_recall([0, 1], [0, 0], 8) == pytest.approx(0.5)
  assert metrics.macro_f1([0, 1], [0, 0], 8) == pytest.approx((2 / 3 + 0) / 2)


def test_a_class_only_predicted_counts_zero_in_macro_f1_through_its_precision():
  # Class 2 never occurs but is predicted once: it takes a sample away from class 0's precision.
  stats = metrics.per_class(metrics.confusion_matrix([0, 0, 1], [0, 2, 1], 3))
  assert stats["precision"][2] == 0.0 and np.isnan(stats["recall"][2])
  assert metrics.macro_f1([0, 0, 1], [0, 2, 1], 3) == pytest.approx((2 / 3 + 1) / 2)


def test_cross_entropy_and_classification_metrics():
  logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]))
  result = metrics.classification_metrics(logits, [0, 2], 3)
  assert result["loss"] == pytest.approx(-(np.log(0.5) + np.log(0.1)) / 2)
  assert result["accuracy"] == 0.5 and result["count"] == 2


def test_report_and_confusion_png(tmp_path):
  matrix = metrics.confusion_matrix(LABELS, PREDICTIONS, 3)
  text = metrics.report(matrix, ["a", "b", "c"])
  assert "accuracy   0.7000" in text and "UAR" in text and "macro F1" in text
  path = tmp_path / "cm.png"
  metrics.plot_confusion_matrix(matrix, str(path), ["a", "b", "c"], title="t")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
