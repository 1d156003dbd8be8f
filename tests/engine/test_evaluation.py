"""The evaluators' model-free baselines, and one exact-match rule at both generation call sites."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import fedlora.engine.instruction as instruction
import fedlora.model.generation as generation
from fedlora.aggregation import GlobalState
from fedlora.data import TokenizedData
from fedlora.engine import build_experiment
from fedlora.engine.evaluation import ClassificationEvaluator
from fedlora.engine.instruction import GenerationEvaluator, InstructionSplit
from fedlora.errors import ConfigError
from fedlora.instruct import InstructionData, InstructionExample, rouge_l
from fedlora.lora.factors import FoldedFactors
from fedlora.model import evaluate_generation, load_causal_lm
from tests.engine.helpers import tiny_causal_config, tiny_config


def _labelled(labels: list[int]) -> TokenizedData:
    """Test rows that only carry labels: all a model-free baseline reads."""
    n = len(labels)
    return TokenizedData(
        input_ids=torch.zeros((n, 1), dtype=torch.long),
        attention_mask=torch.ones((n, 1), dtype=torch.long),
        labels=torch.tensor(labels),
        lengths=torch.ones(n, dtype=torch.long),
        num_truncated=0,
        max_length=1,
        pad_token_id=0,
    )


# ---------------------------------------------------------------------- classification


def test_majority_class_baseline_by_hand() -> None:
    counts = np.array([5, 2, 0, 3])  # class 2 never seen in training
    evaluator = ClassificationEvaluator(_labelled([0, 1, 1, 3, 2, 0]), 4, counts)
    (name, majority), *others = evaluator.baselines().items()
    assert name == "majority_class" and not others
    # always class 0: right on 2 of 6 rows; F1 of class 0 = 2*2 / (2*2 + 4 FP + 0 FN) = 0.5 and
    # 0 for classes 1, 2, 3 (in the labels, never predicted)
    assert majority.accuracy == pytest.approx(2 / 6)
    assert majority.score == majority.accuracy
    assert majority.macro_f1 == pytest.approx(0.5 / 4)
    # add-one smoothed training frequencies (6, 3, 1, 4) / 14, read at the true labels
    by_hand = -sum(math.log(p / 14) for p in (6, 3, 3, 4, 1, 6)) / 6
    assert majority.loss == pytest.approx(by_hand)
    assert majority.rouge_l is None and majority.exact_match is None


def test_majority_class_ties_go_to_the_lowest_label() -> None:
    evaluator = ClassificationEvaluator(_labelled([1, 1, 1]), 4, np.array([0, 4, 4]))
    assert evaluator.baselines()["majority_class"].accuracy == 1.0
    evaluator = ClassificationEvaluator(_labelled([2, 2, 2]), 4, np.array([0, 4, 4]))
    assert evaluator.baselines()["majority_class"].accuracy == 0.0


@pytest.mark.parametrize(
    ("counts", "labels", "match"),
    [
        ([3], [0], "at least 2 classes"),
        ([3, -1], [0], "non-negative"),
        ([0, 0], [0], "not all zero"),
        ([3, 1], [0, 2], "label 2 but the training counts cover 2 classes"),
    ],
)
def test_training_counts_must_fit_the_test_split(
    counts: list[int], labels: list[int], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        ClassificationEvaluator(_labelled(labels), 4, np.array(counts))


class _Echo:
    """A classifier that predicts the class written in each row's first input id."""

    device = torch.device("cpu")

    def __call__(self, **batch: torch.Tensor) -> Any:
        logits = torch.nn.functional.one_hot(batch["input_ids"][:, 0], 3).float()
        return type("Output", (), {"logits": logits})()

    def eval(self) -> None:
        return None


def test_per_class_metrics_are_keyed_by_class_name_and_match_macro_f1() -> None:
    """Issue 11: class names flow into the per-class metrics of every evaluated round."""
    test = _labelled([0, 0, 1, 2])
    test = TokenizedData(**{**test.__dict__, "input_ids": torch.tensor([[0], [1], [1], [1]])})
    names = ["World", "Sports", "Sci/Tech"]
    evaluator = ClassificationEvaluator(test, 2, np.array([1, 1, 1]), class_names=names)
    evaluation = evaluator(_Echo())  # type: ignore[arg-type]
    world, sports, tech = evaluation.extra["per_class"]
    assert [world["class"], sports["class"], tech["class"]] == names
    assert world["support"] == 2 and world["precision"] == 1.0 and world["recall"] == 0.5
    assert [world["predicted"], sports["predicted"]] == [1, 3]
    assert world["f1"] == pytest.approx(2 / 3)
    assert (sports["support"], sports["recall"], sports["f1"]) == (1, 1.0, 0.5)
    assert sports["precision"] == pytest.approx(1 / 3)
    # never predicted: no precision was measured; present and missed: recall and F1 are 0
    assert tech == {
        "class": "Sci/Tech",
        "support": 1,
        "predicted": 0,
        "precision": None,
        "recall": 0.0,
        "f1": 0.0,
    }
    assert evaluation.macro_f1 == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)
    assert evaluation.accuracy == pytest.approx(2 / 4)
    with pytest.raises(ConfigError, match="2 class names for 3 classes"):
        ClassificationEvaluator(test, 2, np.array([1, 1, 1]), class_names=names[:2])


@pytest.mark.slow
def test_the_experiment_counts_training_labels_and_scores_by_accuracy(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    experiment = build_experiment(tiny_config(tiny_bert_dir, tmp_path / "run"))
    evaluator = experiment.evaluator
    assert isinstance(evaluator, ClassificationEvaluator)
    num_classes = len(experiment.group_names)
    assert (
        evaluator.train_label_counts.tolist()
        == np.bincount(experiment.groups, minlength=num_classes).tolist()
    )
    evaluation = experiment.evaluate(experiment.initial_state())
    assert evaluation.score == evaluation.accuracy is not None
    assert [c["class"] for c in evaluation.extra["per_class"]] == experiment.group_names


@pytest.mark.slow
def test_evaluating_at_given_ranks_scores_the_model_a_client_of_those_ranks_is_served(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    """Ranks given: the state's first slots only (what a client of those ranks starts from),
    which is the global model whenever they cover every slot."""
    experiment = build_experiment(tiny_config(tiny_bert_dir, tmp_path / "run"))
    generator = torch.Generator().manual_seed(0)
    modules = {
        name: FoldedFactors(
            A=torch.randn(4, inp, generator=generator), B=torch.randn(out, 4, generator=generator)
        )
        for name, (out, inp) in experiment.model.module_shapes().items()
    }
    state = GlobalState(modules=modules, dense=experiment.initial_state().dense)
    first_slot = GlobalState(
        modules={name: FoldedFactors(A=f.A[:1], B=f.B[:, :1]) for name, f in modules.items()},
        dense=state.dense,
    )
    served = experiment.evaluate(state, dict.fromkeys(modules, 1))
    assert served.loss == pytest.approx(experiment.evaluate(first_slot).loss, rel=1e-5)
    # The head starts near zero, so the losses are all near ln 4; they differ in the 4th digit.
    assert served.loss != pytest.approx(experiment.evaluate(state).loss, abs=1e-5)
    everything = experiment.evaluate(state, dict.fromkeys(modules, 4))
    assert everything.loss == pytest.approx(experiment.evaluate(state).loss, rel=1e-6)


# ---------------------------------------------------------------------- generation

EXAMPLES = [
    InstructionExample("Upper-case it.", "ab Cd", "AB CD", "case", "exact_match"),
    InstructionExample("Upper-case it.", "EF gh", "EF GH", "case", "exact_match"),
    InstructionExample("Spell backwards.", "stone map", "enots pam", "back", "rouge_l"),
    InstructionExample("Spell backwards.", "pam", "map", "back", "rouge_l"),
    InstructionExample("Name a colour: red.", "", "red", "say", "rouge_l"),
]
SIZES = {"case": 40, "back": 10, "say": 25}


def _evaluator(
    tiny_llama_dir: Path, tmp_path: Path, examples: list[InstructionExample]
) -> tuple[GenerationEvaluator, Any]:
    config = tiny_causal_config(tiny_llama_dir, tmp_path / "run")
    model, tokenizer = load_causal_lm(str(tiny_llama_dir))
    test = InstructionData(examples, "hand")
    split = InstructionSplit(
        train=test,
        task_ids=np.zeros(len(examples), dtype=np.int64),
        task_names=test.tasks(),
        partitions=[],
        test=test,
        task_sizes={task: SIZES[task] for task in test.tasks()},
        held_out="by hand",
    )
    return GenerationEvaluator(split, tokenizer, config), model


@pytest.mark.slow
def test_copy_input_baseline_equals_scoring_the_inputs_by_hand(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    evaluator, _ = _evaluator(tiny_llama_dir, tmp_path, EXAMPLES)
    (name, copy), *others = evaluator.baselines().items()
    assert name == "copy_input" and not others
    assert copy.loss is None and copy.accuracy is None
    # case: exact match 0 for both copies (Rouge-L 1); back: the second copy "pam" is a word of
    # the first reference; say: no input, so the copy is the instruction
    back = (rouge_l("stone map", "enots pam") + rouge_l("pam", "map")) / 2
    say = rouge_l("Name a colour: red.", "red")
    assert 0 < say < 1
    assert copy.extra["task_score"] == pytest.approx({"case": 0.0, "back": back, "say": say})
    assert copy.extra["task_metric"] == {"case": "exact_match", "back": "rouge_l", "say": "rouge_l"}
    assert copy.score == pytest.approx((40 * 0.0 + 10 * back + 25 * say) / 75)
    assert copy.rouge_l == pytest.approx((40 * 1.0 + 10 * back + 25 * say) / 75)
    assert copy.exact_match == pytest.approx(0.0)


@pytest.mark.slow
def test_both_generation_call_sites_use_one_exact_match_rule(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the evaluator and evaluate_generation call a hit: only whitespace may differ."""
    reference = "Ab, cd"
    answers = [reference, "  Ab,\n cd ", "ab, cd", "Ab cd", "Ab, cd.", "AB, CD"]
    hits = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    examples = [
        InstructionExample("Copy.", f"x{i}", reference, "case", "exact_match")
        for i in range(len(answers))
    ]
    evaluator, model = _evaluator(tiny_llama_dir, tmp_path, examples)
    answer_of = dict(zip(evaluator.test.prompts, answers, strict=True))

    def fake_generate_greedy(model: Any, tokenizer: Any, prompts: list[str], **_: Any) -> list[str]:
        return [answer_of[p] for p in prompts]

    def fake_generate(*_: Any, **__: Any) -> tuple[list[str], int]:
        return answers, 0

    monkeypatch.setattr(instruction, "generate_greedy", fake_generate_greedy)
    monkeypatch.setattr(generation, "_generate", fake_generate)
    scored = evaluator(model)
    direct = evaluate_generation(
        model, evaluator.tokenizer, evaluator.test.prompts, [reference] * 6, max_new_tokens=1
    )
    assert direct.outputs == answers
    assert scored.exact_match == scored.score == pytest.approx(np.mean(hits))
    assert direct.exact_match == pytest.approx(np.mean(hits))
