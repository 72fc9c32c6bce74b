"""Pass/fail metrics of a model on images sorted into class folders: one good class, the rest defective.

A part whose ring was not found is rejected by the daemon, so it counts as predicted defective
(fail-safe) and ranks above every scored part in the ROC AUC (its score is taken as +infinity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge.evaluation.metrics import classification_rates, roc_auc
from edge.parts import Verdict


@dataclass(frozen=True)
class ClassifiedPart:
    """The outcome of one image. `image_score` is None, and `verdict` REJECT, when no ring was found."""

    class_name: str
    defective: bool
    image_score: float | None
    verdict: Verdict

    @property
    def ring_not_found(self) -> bool:
        return self.image_score is None

    @property
    def predicted_defective(self) -> bool:
        return self.verdict is not Verdict.PASS

    @property
    def ranking_score(self) -> float:
        return math.inf if self.image_score is None else self.image_score


def classification_metrics(parts: list[ClassifiedPart]) -> dict:
    """Return accuracy, precision, recall, f1, roc_auc, confusion matrix, rates, counts and per-class figures.

    `confusion_matrix` has rows true good / defective and columns predicted pass / fail.
    Undefined rates (a class without parts) are NaN.
    """
    if not parts:
        raise ValueError("no parts to evaluate; add images to the class folders")
    labels = np.array([part.defective for part in parts], dtype=np.int64)
    predicted = np.array([part.predicted_defective for part in parts], dtype=np.int64)
    scores = np.array([part.ranking_score for part in parts], dtype=np.float64)

    metrics = {
        **classification_rates(labels, predicted),
        "roc_auc": roc_auc(labels, scores),
        "counts": {
            "images": len(parts),
            "good": int(np.count_nonzero(labels == 0)),
            "defective": int(np.count_nonzero(labels == 1)),
        },
        "ring_not_found": sum(1 for part in parts if part.ring_not_found),
        "per_class": _per_class(parts),
    }
    return metrics


def _per_class(parts: list[ClassifiedPart]) -> dict[str, dict]:
    """Figures of each class folder; defective classes are also ranked against the good parts."""
    good_scores = [part.ranking_score for part in parts if not part.defective]
    per_class = {}
    for class_name in sorted({part.class_name for part in parts}):
        members = [part for part in parts if part.class_name == class_name]
        failed = sum(1 for part in members if part.predicted_defective)
        scored = [part.image_score for part in members if part.image_score is not None]
        figures = {
            "good": not members[0].defective,
            "count": len(members),
            "predicted_fail": failed,
            "ring_not_found": sum(1 for part in members if part.ring_not_found),
            "mean_image_score": float(np.mean(scored)) if scored else math.nan,
        }
        if members[0].defective:
            class_scores = [part.ranking_score for part in members]
            labels = [0] * len(good_scores) + [1] * len(class_scores)
            figures["recall"] = failed / len(members)
            figures["escape_rate"] = 1.0 - failed / len(members)
            figures["roc_auc"] = roc_auc(np.array(labels), np.array(good_scores + class_scores, dtype=np.float64))
        else:
            figures["false_reject_rate"] = failed / len(members)
        per_class[class_name] = figures
    return per_class
