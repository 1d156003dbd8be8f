"""The causal-LM side of an experiment: instruction data, task splits, tokenisation, evaluation.

FlexLoRA's setting: every task is a client's data (the ``natural`` partition), a share of the tasks
is held out of every client, and the global model is scored by greedy generation on those unseen
tasks: each task by its own metric (the ``score``), and by Rouge-L and exact match, averaged with
each task's data size as weight.  With ``instruct.seen_test_fraction`` a share of every seen
task's examples is held out too and scored the same way, in ``extra["seen_tasks"]``.  With
``instruct.unseen_fraction = 0`` the test set is instead a held-out share of every task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedlora.config import ExperimentConfig
from fedlora.data import Partitioner
from fedlora.engine.evaluation import Evaluation
from fedlora.errors import ConfigError
from fedlora.instruct import (
    InstructionData,
    InstructionExample,
    TaskScores,
    chat_messages,
    copy_input_scores,
    format_prompt,
    generate_tasks,
    load_instruction_dataset,
    score_tasks,
    task_partition,
    tasks_needed,
    train_test_split_per_task,
)
from fedlora.model import (
    AdaptedModel,
    LMEvalResult,
    TokenizedInstructions,
    evaluate_lm,
    generate_greedy,
)
from fedlora.seeds import derive_seed, rng

Indices = npt.NDArray[np.int64]
CLASSIFICATION_DATASETS = ("ag_news", "dbpedia_14", "synthetic")


@dataclass(frozen=True)
class InstructionSplit:
    """Training rows (with their task ids and client partitions) and the test examples.

    ``seen_test``: held-out examples of the training tasks (``instruct.seen_test_fraction``).
    """

    train: InstructionData
    task_ids: Indices
    task_names: list[str]
    partitions: list[Indices]
    test: InstructionData
    task_sizes: dict[str, int]
    """Every task's number of examples: the weight of its score."""
    held_out: str
    seen_test: InstructionData | None = None


def load_instructions(config: ExperimentConfig) -> InstructionData:
    """The instruction examples named by ``data.dataset`` (``generated`` = the built-in tasks)."""
    name = config.data.dataset
    if name in CLASSIFICATION_DATASETS:
        raise ConfigError(
            f"data.dataset: {name!r} is a classification dataset; with task = 'causal-lm' use "
            f"'generated' or an Alpaca/Dolly/Natural-Instructions file, folder or hub name"
        )
    if name == "generated":
        instruct = config.instruct
        num_tasks = instruct.num_tasks or tasks_needed(
            config.run.num_clients, instruct.unseen_fraction
        )
        low, high = instruct.examples_per_task
        data = generate_tasks(
            num_tasks=num_tasks,
            examples_per_task=(low, high),
            seed=derive_seed(config.run.seed, "tasks"),
            data_dir=config.data.data_dir or None,
        )
    else:
        data = load_instruction_dataset(name)
    for i, example in enumerate(data.examples):
        if not example.output.strip():
            raise ConfigError(
                f"data.dataset {name!r}: example {i} (task {example.task!r}) has an empty "
                f"response; drop it or fill it in"
            )
    return data


def split_instructions(
    config: ExperimentConfig, data: InstructionData, partitioner: Partitioner | None
) -> InstructionSplit:
    """Hold out the test examples, then deal the training rows to the clients.

    ``partitioner=None`` is the natural partition (whole tasks per client); any other partitioner
    sees a row's task as its label.
    """
    seed, instruct = config.run.seed, config.instruct
    if instruct.unseen_fraction > 0:
        (seen,), unseen = task_partition(
            data,
            num_clients=1,
            unseen_fraction=instruct.unseen_fraction,
            seed=derive_seed(seed, "tasks", 1),
        )
        held = set(unseen)
        test_rows = np.flatnonzero([example.task in held for example in data.examples])
        held_out = f"{len(unseen)} unseen tasks"
        train_rows, seen_rows = seen, seen[:0]
        if instruct.seen_test_fraction > 0:
            kept, tested = train_test_split_per_task(
                data.subset(seen), instruct.seen_test_fraction, derive_seed(seed, "seen_test")
            )
            train_rows, seen_rows = seen[kept], seen[tested]
    else:
        train_rows, test_rows = train_test_split_per_task(
            data, instruct.test_fraction, derive_seed(seed, "test_split")
        )
        held_out = f"{instruct.test_fraction:g} of every task"
        seen_rows = test_rows[:0]
    sizes = {task: len(rows) for task, rows in data.by_task().items()}
    train = _subsample(
        data.subset(train_rows), config.data.max_train_samples, rng(seed, "train_subsample")
    )
    test = _test_examples(data.subset(test_rows), config, rng(seed, "test_subsample"))
    seen_test = None
    if len(seen_rows):
        seen_test = _test_examples(data.subset(seen_rows), config, rng(seed, "seen_test", 1))
    names = train.tasks()
    position = {task: i for i, task in enumerate(names)}
    task_ids = np.asarray([position[ex.task] for ex in train.examples], dtype=np.int64)
    num_clients = config.run.num_clients
    if partitioner is None:
        partitions, _ = task_partition(
            train, num_clients=num_clients, unseen_fraction=0.0, seed=derive_seed(seed, "partition")
        )
    else:
        partitions = partitioner.partition(task_ids, num_clients)
    return InstructionSplit(
        train=train,
        task_ids=task_ids,
        task_names=names,
        partitions=[np.asarray(p, dtype=np.int64) for p in partitions],
        test=test,
        task_sizes=sizes,
        held_out=held_out,
        seen_test=seen_test,
    )


def _subsample(
    data: InstructionData, limit: int, generator: np.random.Generator
) -> InstructionData:
    if limit == 0 or len(data) <= limit:
        return data
    return data.subset(np.sort(generator.choice(len(data), size=limit, replace=False)))


def _test_examples(
    data: InstructionData, config: ExperimentConfig, generator: np.random.Generator
) -> InstructionData:
    """At most ``instruct.eval_per_task`` examples of every test task, then ``max_test_samples``."""
    if len(data) == 0:
        raise ConfigError("instruct: the split leaves no test examples; hold out more tasks")
    per_task = config.instruct.eval_per_task
    kept = [
        rows if per_task == 0 or len(rows) <= per_task else generator.choice(rows, per_task, False)
        for rows in data.by_task().values()
    ]
    subset = data.subset(np.sort(np.concatenate(kept)))
    return _subsample(subset, config.data.max_test_samples, generator)


def render_prompts(
    examples: Sequence[InstructionExample], template: str, tokenizer: Any
) -> list[str]:
    """Each example's prompt: a named template, or the tokenizer's chat template."""
    if template != "chat":
        return [format_prompt(example, template) for example in examples]
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "instruct.template: 'chat' needs a tokenizer with a chat template, and this model's "
            "has none; use 'alpaca' or 'plain'"
        )
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    prompts = []
    for example in examples:
        text = str(
            tokenizer.apply_chat_template(
                chat_messages(example), add_generation_prompt=True, tokenize=False
            )
        )
        # The tokenizer adds its BOS itself; a second one from the template would be a new token.
        prompts.append(text.removeprefix(bos) if adds_bos else text)
    return prompts


def tokenize_instructions(
    data: InstructionData,
    tokenizer: Any,
    config: ExperimentConfig,
    prompts: Sequence[str] | None = None,
) -> TokenizedInstructions:
    """The examples tokenised for training; ``prompts`` if they were already rendered."""
    return TokenizedInstructions.from_pairs(
        prompts or render_prompts(data.examples, config.instruct.template, tokenizer),
        [example.output for example in data.examples],
        tokenizer,
        config.model.max_length,
        response_only=config.instruct.response_only,
    )


class _GenerationSet:
    """One test set's prompts (longest first: batches of similar length waste the least
    padding), reference tokens and task sizes (the weights of the per-task scores)."""

    def __init__(
        self,
        test: InstructionData,
        task_sizes: dict[str, int],
        tokenizer: Any,
        config: ExperimentConfig,
    ) -> None:
        prompts = render_prompts(test.examples, config.instruct.template, tokenizer)
        self.tokens = tokenize_instructions(test, tokenizer, config, prompts)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        self.prompts = [prompts[i] for i in order]
        self.examples = [test.examples[i] for i in order]
        self.task_sizes = {task: task_sizes[task] for task in test.tasks()}


class GenerationEvaluator:
    """Greedy generation on the test examples, scored per task and weighted by task size.

    ``test_loss`` is the teacher-forced loss of the references (response tokens), reported next to
    the generation metrics, never instead of them.  The ``copy_input`` baseline answers every
    test prompt with its input (:func:`~fedlora.instruct.copy_input`) and is scored the same way.
    With a seen-task test set (``split.seen_test``) the model and the baseline are scored on it
    too, into ``extra["seen_tasks"]``: score, Rouge-L, exact match and (for the model) loss.
    """

    def __init__(
        self,
        split: InstructionSplit,
        tokenizer: Any,
        config: ExperimentConfig,
    ) -> None:
        self.tokenizer = tokenizer
        self.test = _GenerationSet(split.test, split.task_sizes, tokenizer, config)
        self.seen = None
        if split.seen_test is not None:
            self.seen = _GenerationSet(split.seen_test, split.task_sizes, tokenizer, config)
        self.max_new_tokens = config.instruct.max_new_tokens
        self.max_prompt_length = config.model.max_length
        self.batch_size = config.train.eval_batch_size
        prompt_rows = tokenizer(self.test.prompts, add_special_tokens=True)["input_ids"]
        self.num_truncated_prompts = sum(len(row) > self.max_prompt_length for row in prompt_rows)

    def __call__(self, model: AdaptedModel) -> Evaluation:
        scores, loss, outputs = self._generate(model, self.test)
        samples = [
            {"task": ex.task, "reference": ex.output, "output": out}
            for ex, out in list(zip(self.test.examples, outputs, strict=True))[:3]
        ]
        extra: dict[str, Any] = {"test_perplexity": loss.perplexity, "samples": samples}
        if self.seen is not None:
            seen_scores, seen_loss, _ = self._generate(model, self.seen)
            extra["seen_tasks"] = {**_headline(seen_scores), "loss": seen_loss.loss}
        return self._evaluation(scores, loss.loss, extra)

    def baselines(self) -> dict[str, Evaluation]:
        """``copy_input``: every test prompt answered with its input, scored like the model."""
        extra: dict[str, Any] = {}
        if self.seen is not None:
            seen = copy_input_scores(self.seen.examples, self.seen.task_sizes)
            extra["seen_tasks"] = _headline(seen)
        copied = copy_input_scores(self.test.examples, self.test.task_sizes)
        return {"copy_input": self._evaluation(copied, extra=extra)}

    def _generate(
        self, model: AdaptedModel, test: _GenerationSet
    ) -> tuple[TaskScores, LMEvalResult, list[str]]:
        indices = np.arange(len(test.tokens), dtype=np.int64)
        lm = evaluate_lm(model, test.tokens.batches(indices, self.batch_size))
        outputs = generate_greedy(
            model,
            self.tokenizer,
            test.prompts,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            max_prompt_length=self.max_prompt_length,
        )
        return score_tasks(test.examples, outputs, test.task_sizes), lm, outputs

    def _evaluation(
        self, scores: TaskScores, loss: float | None = None, extra: dict[str, Any] | None = None
    ) -> Evaluation:
        """The weighted scores, and per test task its metric, score and Rouge-L."""
        return Evaluation(
            loss=loss,
            rouge_l=scores.rouge_l,
            exact_match=scores.exact_match,
            score=scores.score,
            extra={
                **(extra or {}),
                "task_metric": {ex.task: ex.metric for ex in self.test.examples},
                "task_score": {t: m["score"] for t, m in scores.by_task.items()},
                "task_rouge_l": {t: m["rouge_l"] for t, m in scores.by_task.items()},
            },
        )


def _headline(scores: TaskScores) -> dict[str, float]:
    return {"score": scores.score, "rouge_l": scores.rouge_l, "exact_match": scores.exact_match}
