"""Classification metrics on host numpy arrays: accuracy, UAR, macro-F1, per-class report, confusion matrix.

Conventions (the usual ones, as in scikit-learn): rows of the confusion matrix are true classes, columns
predictions. UAR (unweighted average recall) is the mean over classes of recall; macro-F1 the mean of
per-class F1. A class absent from both labels and predictions is left out of the means (its recall and
F1 are undefined); a class with true samples but no correct prediction counts as 0.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np


def _names(matrix: np.ndarray, class_names: Optional[Sequence[str]]) -> list:
  """The given class names (label order; the model's, e.g. checkpoint_kinds.LoadedModel.class_names), else
  'class 0', 'class 1', ..."""
  return list(class_names) if class_names is not None else [f"class {i}" for i in range(len(matrix))]


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
  labels = np.asarray(labels, np.int64)
  predictions = np.asarray(predictions, np.int64)
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


def per_class(matrix: np.ndarray) -> Dict[str, np.ndarray]:
  """precision, recall, f1, support per class (NaN where undefined)."""
  matrix = np.asarray(matrix, np.float64)
  true_positive = np.diag(matrix)
  support = matrix.sum(axis=1)
  predicted = matrix.sum(axis=0)
  with np.errstate(divide="ignore", invalid="ignore"):
    precision = np.where(predicted > 0, true_positive / predicted, np.where(support > 0, 0.0, np.nan))
    recall = np.where(support > 0, true_positive / support, np.nan)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
  f1 = np.where(np.isnan(precision) | np.isnan(recall), np.nan, f1)
  return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def accuracy(labels, predictions) -> float:
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  return float(np.mean(labels == predictions)) if len(labels) else float("nan")


def unweighted_average_recall(labels, predictions, num_classes: int) -> float:
  return float(np.nanmean(per_class(confusion_matrix(labels, predictions, num_classes))["recall"]))


def macro_f1(labels, predictions, num_classes: int) -> float:
  stats = per_class(confusion_matrix(labels, predictions, num_classes))
  present = stats["support"] > 0
  return float(np.mean(np.nan_to_num(stats["f1"][present]))) if present.any() else float("nan")


def cross_entropy(logits, labels) -> float:
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  return float(-np.mean(log_probs[np.arange(len(labels)), np.asarray(labels)]))


def classification_metrics(logits, labels, num_classes: int) -> Dict[str, float]:
  """{'accuracy', 'uar', 'macro_f1', 'loss', 'count'} from logits (N, C) and labels (N,)."""
  predictions = np.argmax(np.asarray(logits), axis=1)
  return {"accuracy": accuracy(labels, predictions),
          "uar": unweighted_average_recall(labels, predictions, num_classes),
          "macro_f1": macro_f1(labels, predictions, num_classes),
          "loss": cross_entropy(logits, labels), "count": int(len(labels))}


def report(matrix: np.ndarray, class_names: Optional[Sequence[str]] = None) -> str:
  """A per-class text table (precision, recall, F1, support) plus accuracy, UAR and macro-F1."""
  matrix = np.asarray(matrix)
  names = _names(matrix, class_names)
  stats = per_class(matrix)
  width = max(len(n) for n in names + ["macro avg"])
  lines = [f"{'':{width}}  precision  recall      f1  support"]
  for i, name in enumerate(names):
    lines.append(f"{name:{width}}  {stats['precision'][i]:9.3f}  {stats['recall'][i]:6.3f}  "
                 f"{stats['f1'][i]:6.3f}  {stats['support'][i]:7d}")
  total = matrix.sum()
  present = stats["support"] > 0
  acc = np.trace(matrix) / total if total else float("nan")
  lines.append("")
  lines.append(f"{'accuracy':{width}}  {acc:.4f}   (n={total})")
  lines.append(f"{'UAR':{width}}  {np.nanmean(stats['recall']):.4f}")
  lines.append(f"{'macro F1':{width}}  {np.mean(np.nan_to_num(stats['f1'][present])):.4f}")
  return "\n".join(lines)


def plot_confusion_matrix(matrix: np.ndarray, path: str, class_names: Optional[Sequence[str]] = None,
                          title: str = ""):
  """Row-normalised confusion matrix PNG (counts in the cells)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  matrix = np.asarray(matrix)
  names = _names(matrix, class_names)
  rows = matrix.sum(axis=1, keepdims=True)
  normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
  fig, ax = plt.subplots(figsize=(6.5, 5.5))
  image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
  for i in range(len(names)):
    for j in range(len(names)):
      ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
              color="white" if normalised[i, j] > 0.5 else "black", fontsize=8)
  ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if title:
    ax.set_title(title)
  fig.colorbar(image, ax=ax, label="recall (row-normalised)")
  fig.tight_layout()
  from etils import epath
  with epath.Path(path).open("wb") as f:  # a gs:// workdir too
    fig.savefig(f, dpi=100, format="png")
  plt.close(fig)
