"""The metrics shown beside the headline: macro-F1 beside accuracy, Rouge-L beside the score.

On an imbalanced test set accuracy alone hides a classifier that predicts only the large classes
(0.72 accuracy can be 0.16 macro-F1).  A causal-LM run is judged by its score (each task by its
own metric); Rouge-L over every task, the metric FlexLoRA reports, is shown beside it.
"""

from __future__ import annotations

from fedlora.runs.metrics import ACCURACY, MACRO_F1, ROUGE_L, SCORE, Headline

COMPANIONS = {ACCURACY: MACRO_F1, SCORE: ROUGE_L}


def with_companion(metric: Headline) -> list[Headline]:
    """``metric`` and the metric shown next to it wherever it is shown."""
    companion = COMPANIONS.get(metric)
    return [metric] if companion is None else [metric, companion]
