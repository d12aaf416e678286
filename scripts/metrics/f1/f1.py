"""F1: the Hub's `evaluate` module "f1" (same inputs, options and results as scikit-learn's `f1_score`), without it."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
The F1 score is the harmonic mean of the precision and recall. It can be computed with the equation:
F1 = 2 * (precision * recall) / (precision + recall)
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): Predicted labels.
    references (`list` of `int`): Ground truth labels.
    labels (`list` of `int`): The set of labels to include when `average` is not set to `'binary'`, and the order of
        the labels if `average` is `None`. Labels not present in the data result in 0 components in a macro average.
        For multilabel targets, labels are column indices. By default, all labels in `predictions` and `references`
        are used in sorted order. Defaults to None.
    pos_label (`int`): The class to be considered the positive class, in the case where `average` is set to
        `binary`. Defaults to 1.
    average (`string`): If set to `None`, the scores for each class are returned. Otherwise, this determines the
        type of averaging performed on the data. Defaults to `'binary'`.
        - 'binary': Only report results for the class specified by `pos_label` (two classes at most).
        - 'micro': Calculate metrics globally by counting the total true positives, false negatives and false
          positives.
        - 'macro': Calculate metrics for each label, and find their unweighted mean.
        - 'weighted': Calculate metrics for each label, and find their average weighted by support (the number of
          true instances for each label).
        - 'samples': Calculate metrics for each instance, and find their average (multilabel only).
    sample_weight (`list` of `float`): Sample weights. Defaults to None.

Returns:
    f1 (`float` or `array` of `float`): F1 score or list of f1 scores, depending on the value passed to `average`.
        Minimum possible value is 0. Maximum possible value is 1. An F1 whose precision and recall are both
        undefined (no true or predicted instance) is 0, as scikit-learn's default.

Examples:
    >>> f1_metric = evaluate.load("scripts/metrics/f1")
    >>> f1_metric.compute(references=[0, 1, 0, 1, 0], predictions=[0, 0, 1, 1, 0])
    {'f1': 0.5}
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O. and
          Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A. and
          Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


def _f1(tp, fp, fn):
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator, dtype=float), where=denominator > 0)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        value = datasets.Value("int32")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(value), "references": datasets.Sequence(value)}
                if self.config_name == "multilabel"
                else {"predictions": value, "references": value}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None):
        y_pred, y_true = np.asarray(predictions), np.asarray(references)
        if y_pred.shape != y_true.shape:
            raise ValueError(f"predictions {y_pred.shape} and references {y_true.shape} differ in shape.")
        if y_true.ndim == 2 and y_true.shape[1] == 1:  # a column of classes, as scikit-learn takes it
            y_pred, y_true = y_pred[:, 0], y_true[:, 0]
        multilabel = y_true.ndim == 2
        weights = np.ones(len(y_true)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        present = np.unique(np.concatenate([y_true.ravel(), y_pred.ravel()]))
        if average not in (None, "binary", "micro", "macro", "weighted", "samples"):
            raise ValueError("average has to be one of None, 'binary', 'micro', 'macro', 'weighted', 'samples'.")
        if average == "binary":
            if multilabel or len(present) > 2:
                kind = "multilabel-indicator" if multilabel else "multiclass"
                raise ValueError(
                    f"Target is {kind} but average='binary'. Please choose another average setting, one "
                    "of [None, 'micro', 'macro', 'weighted']."
                )
            if pos_label not in present and len(present) >= 2:
                raise ValueError(f"pos_label={pos_label} is not a valid label. It should be one of {present.tolist()}")
            labels = [pos_label]
        if average == "samples" and not multilabel:
            raise ValueError(
                "Sample-based precision, recall, fscore is not meaningful outside multilabel "
                "classification. See the accuracy_score instead."
            )
        if multilabel:  # one column a label: true and predicted indicators
            labels = np.arange(y_true.shape[1]) if labels is None else np.asarray(labels)
            true, pred = y_true[:, labels] == 1, y_pred[:, labels] == 1
        else:
            labels = present if labels is None else np.asarray(labels)
            true, pred = y_true[:, None] == labels, y_pred[:, None] == labels
        if average == "samples":  # an F1 per sample, over its labels
            score = _f1(*((a & b).sum(1) for a, b in [(true, pred), (~true, pred), (true, ~pred)]))
            return {"f1": float(np.average(score, weights=weights))}
        tp, fp, fn, support = (weights @ m for m in (true & pred, ~true & pred, true & ~pred, true))
        if average == "micro":
            score = _f1(tp.sum(), fp.sum(), fn.sum())
        else:
            score = _f1(tp, fp, fn)
            if average == "weighted":
                score = np.average(score, weights=support) if support.sum() > 0 else np.float64(0.0)
            elif average is not None:  # macro, binary
                score = score.mean()
        return {"f1": score.item() if score.size == 1 else score}
