"""The metric shown beside the headline: macro-F1 beside accuracy.

On an imbalanced test set accuracy alone hides a classifier that predicts only the large classes
(0.72 accuracy can be 0.16 macro-F1).  Rouge-L, the headline of causal-LM runs, has none.
"""

from __future__ import annotations

from fedlora.runs.metrics import ACCURACY, Headline

MACRO_F1 = Headline("test_macro_f1", "test macro-F1")


def with_companion(metric: Headline) -> list[Headline]:
    """``metric`` and the metric shown next to it wherever it is shown."""
    return [metric, MACRO_F1] if metric == ACCURACY else [metric]
