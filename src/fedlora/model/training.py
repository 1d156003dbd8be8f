"""A client's local training and the evaluation of a classifier, on an :class:`AdaptedModel`.

:func:`train_local` also trains causal LMs: it minimises a Hugging Face causal LM's shifted
next-token loss, averaged over the batch's labelled tokens, computed from the decoder's hidden
states a chunk of positions at a time (without the full ``batch x length x vocabulary`` logits)
where the model's output layer allows it, else the loss the model returns for the batch's
``labels``.  :func:`evaluate_lm` is the causal LM's teacher-forced loss and perplexity, computed
the same way; :func:`evaluate` stays a classifier's loss, accuracy and macro-F1.

Both take batches that are already tokenised and collated: dicts of tensors with ``input_ids``,
``attention_mask`` and ``labels`` (and any other inputs the model accepts, e.g.
``token_type_ids``).  Batching, shuffling and their seeded generators belong to the data layer;
``TrainConfig.batch_size`` is carried here so that one config describes the client's training.

Neither function seeds anything.  Dropout (the model's and the LoRA dropout) draws from torch's
default generator, which the runner seeds once at process start; everything else is
deterministic given the batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from weakref import WeakKeyDictionary

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fedlora.errors import ConfigError, FedloraError
from fedlora.model.adapted import AdaptedModel

Batch = Mapping[str, Tensor]
Batches = Callable[[], Iterable[Batch]] | Iterable[Batch]
"""An iterable of batches, or a function returning a fresh one per epoch (to reshuffle)."""

FLOAT16_LOSS_SCALE = 2.0**10
"""The first loss scale of a float16 client's training (halved on every overflowing step)."""

LOSS_CHUNK_ELEMENTS = 1 << 24
"""How many float32 logits :func:`evaluate_lm` and :func:`train_local` hold at once (64 MB):
rows x vocabulary."""

OptimizerName = Literal["adamw", "sgd"]
Schedule = Literal["constant", "linear", "cosine"]


@dataclass(frozen=True)
class TrainConfig:
    """How a client trains locally: for ``epochs`` passes or a fixed number of ``steps``.

    Give at most one of ``epochs`` and ``steps``; with neither, one epoch.  The learning rate
    warms up linearly over ``warmup_steps`` and then follows ``schedule`` down to (almost) zero
    at the last step; linear and cosine schedules with ``epochs`` need batches with a length.

    A step is one optimizer update from ``gradient_accumulation_steps`` batches: their gradients
    are summed, each batch's loss weighted by its share of the step's examples (of its labelled
    tokens, for batches of per-token labels), so that ``k`` batches of ``b`` rows make the step
    that one batch of ``k * b`` rows would.  ``steps`` counts updates; a step never spans two
    epochs, so an epoch whose batches ``k`` does not divide ends with a shorter step.
    """

    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 16
    lr: float = 5e-4
    optimizer: OptimizerName = "adamw"
    weight_decay: float = 0.0
    momentum: float = 0.0
    schedule: Schedule = "constant"
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    gradient_accumulation_steps: int = 1

    def __post_init__(self) -> None:
        if self.epochs is not None and self.steps is not None:
            raise ConfigError(
                f"train: give epochs or steps, not both (epochs={self.epochs}, steps={self.steps})"
            )
        if self.epochs is None and self.steps is None:
            object.__setattr__(self, "epochs", 1)
        for key in ("epochs", "steps", "batch_size", "gradient_accumulation_steps"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ConfigError(f"train.{key} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"train.optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("constant", "linear", "cosine"):
            raise ConfigError(
                f"train.schedule must be 'constant', 'linear' or 'cosine', got {self.schedule!r}"
            )
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ConfigError(
                f"train.weight_decay must be >= 0 and train.momentum in [0, 1), got "
                f"{self.weight_decay} and {self.momentum}"
            )
        if self.warmup_steps < 0:
            raise ConfigError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(
                f"train.max_grad_norm must be positive or None, got {self.max_grad_norm}"
            )


@dataclass(frozen=True)
class TrainResult:
    """Mean task loss over the examples seen (without any regulariser), steps and examples."""

    mean_loss: float
    steps: int
    examples: int


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy, accuracy and macro-F1 over ``examples`` examples."""

    loss: float
    accuracy: float
    macro_f1: float
    examples: int


class Classifier(Protocol):
    """What :func:`evaluate` needs: a forward returning ``.logits``, and an eval mode."""

    def __call__(self, **batch: Tensor) -> Any: ...

    def eval(self) -> Any: ...


def lr_factor(step: int, total_steps: int | None, warmup_steps: int, schedule: Schedule) -> float:
    """The learning-rate multiplier of 0-based ``step``: linear warmup, then the schedule.

    Warmup reaches 1 at step ``warmup_steps - 1``; the decay never reaches 0 on a step that is
    taken (the last step of a linear schedule of ``n`` decay steps uses ``1 / n``).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if total_steps is None:
        raise ConfigError(f"train.schedule {schedule!r} needs the total number of steps")
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_local(
    model: AdaptedModel,
    batches: Batches,
    config: TrainConfig,
    *,
    regularizer: Callable[[], Tensor] | None = None,
    chunked_loss: bool = True,
    chunk_rows: int | None = None,
) -> TrainResult:
    """Train the active adapter in place with a fresh optimizer; the model is left in eval mode.

    ``regularizer`` is added to every step's loss (e.g. HetLoRA's self-pruning penalty computed
    from ``model.lora_parameters()``).  Gradients are released at the end, so that inactive
    adapters hold no gradient memory.

    A causal LM's batch of per-token ``labels`` is scored without its full ``batch x length x
    vocabulary`` logits (unless ``chunked_loss`` is false): the loss is Hugging Face's (the
    logits at ``t`` against ``labels[t + 1]``, ``-100`` ignored, the mean over the batch's
    labelled tokens), but the output layer sees the decoder's hidden states at the labelled
    positions only, ``chunk_rows`` rows at a time (default: :data:`LOSS_CHUNK_ELEMENTS` float32
    logits), and each chunk is checkpointed (:func:`_chunked_cross_entropy`), so that one chunk's
    logits are alive at a time in the backward pass too.  Where the output layer does not give
    the model's logits (:func:`split_lm_head`: logit scaling, soft-capping), the model's own loss
    is used.  Two differences from the model's loss, neither of which changes the expected
    gradient: a batch without labelled tokens counts as a loss of 0 (not NaN), and a LoRA dropout
    on the output layer draws its masks per chunk rather than for the whole batch.

    On a float16 base model the backward pass is loss-scaled (``torch.amp.GradScaler``, a fresh
    one per call starting at :data:`FLOAT16_LOSS_SCALE`): float16 gradients of the activations
    would otherwise underflow before they reach the float32 LoRA factors.  A step whose scaled
    gradients overflow is skipped (and the scale halved), as mixed-precision training does.
    """
    params = model.trainable_parameters()
    optimizer = _optimizer(params, config)
    epochs, total = _plan(batches, config)
    device = model.device
    scaler = (
        torch.amp.GradScaler(device.type, init_scale=FLOAT16_LOSS_SCALE)
        if model.dtype == torch.float16
        else None
    )
    steps = examples = 0
    loss_sum = 0.0
    network = model.model
    split: LMHeadSplit | None = None
    checked = not (chunked_loss and _is_causal_lm(network))
    model.train()
    try:
        for group in epochs:
            factor = lr_factor(steps, total, config.warmup_steps, config.schedule)
            for param_group in optimizer.param_groups:
                param_group["lr"] = config.lr * factor
            optimizer.zero_grad(set_to_none=True)
            shares = _loss_shares(group)
            for position, batch in enumerate(group):
                inputs = {key: value.to(device) for key, value in batch.items()}
                labels = _token_labels(inputs)
                unlabelled = _without_labels(inputs) if labels is not None else inputs
                if labels is not None and not checked:
                    split, checked = split_lm_head(network, unlabelled), True
                if labels is not None and split is not None:
                    summed, tokens = lm_loss_sum(split, unlabelled, labels, chunk_rows)
                    loss = summed / max(1, tokens)
                else:
                    loss = _loss(model(**inputs))
                objective = loss if len(group) == 1 else loss * shares[position]
                if regularizer is not None and position == 0:
                    objective = objective + regularizer()
                if not objective.requires_grad:
                    pass  # no labelled token (and no regulariser): nothing to learn from
                elif scaler is None:
                    torch.autograd.backward(objective)
                else:
                    torch.autograd.backward(scaler.scale(objective))
                count = int(inputs["labels"].shape[0])
                examples += count
                loss_sum += float(loss.detach()) * count
                del inputs, loss, objective
            if scaler is not None:
                scaler.unscale_(optimizer)
            if config.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
            steps += 1
            if config.steps is not None and steps >= config.steps:
                break
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.eval()
    if examples == 0:
        raise FedloraError("train_local: the batches were empty")
    return TrainResult(mean_loss=loss_sum / examples, steps=steps, examples=examples)


def evaluate(model: AdaptedModel | Classifier, batches: Batches) -> EvalResult:
    """Cross-entropy, accuracy and macro-F1 of the current model on labelled batches.

    Runs in eval mode under ``torch.inference_mode``.  Macro-F1 is defined in :func:`macro_f1`.
    """
    model.eval()
    device = _device(model)
    loss_sum = 0.0
    predictions: list[Tensor] = []
    labels: list[Tensor] = []
    with torch.inference_mode():
        for batch in batches() if callable(batches) else batches:
            target = batch["labels"].to(device)
            inputs = {key: value.to(device) for key, value in batch.items() if key != "labels"}
            logits = model(**inputs).logits.float()
            if logits.ndim != 2 or logits.shape[-1] < 2:
                raise FedloraError(
                    f"evaluate needs classification logits (batch x classes >= 2), got "
                    f"{tuple(logits.shape)}"
                )
            loss_sum += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            predictions.append(logits.argmax(dim=-1).cpu())
            labels.append(target.cpu())
    if not labels:
        raise FedloraError("evaluate: the batches were empty")
    predicted = torch.cat(predictions)
    truth = torch.cat(labels)
    count = int(truth.numel())
    if count == 0:
        raise FedloraError("evaluate: the batches were empty")
    return EvalResult(
        loss=loss_sum / count,
        accuracy=float((predicted == truth).float().mean()),
        macro_f1=macro_f1(predicted, truth),
        examples=count,
    )


@dataclass(frozen=True)
class LMEvalResult:
    """Mean per-token cross-entropy of a causal LM on its labelled tokens, and its perplexity."""

    loss: float
    perplexity: float
    tokens: int
    examples: int


def evaluate_lm(
    model: AdaptedModel | Classifier, batches: Batches, *, chunk_rows: int | None = None
) -> LMEvalResult:
    """Teacher-forced loss and perplexity of a causal LM, weighted by token (not by batch).

    Batches hold ``input_ids``, ``attention_mask`` and ``labels`` with ``-100`` on the positions
    that do not count (see :class:`~fedlora.model.instructions.TokenizedInstructions`); the
    logits at position ``t`` are scored against ``labels[t + 1]``, as Hugging Face's loss does.
    Runs in eval mode under ``torch.inference_mode``.  Quality of what the model *generates* is
    measured by :func:`~fedlora.model.generation.evaluate_generation`, not here.

    The full ``batch x length x vocabulary`` logits are never built: the model's decoder gives
    the hidden states, and its output layer scores only the labelled positions, ``chunk_rows``
    at a time (default: :data:`LOSS_CHUNK_ELEMENTS` float32 logits), each chunk upcast to
    float32.  The split into decoder and output layer is checked once per model against the
    model's own logits (:func:`split_lm_head`); a model where it does not hold (logits scaled or
    soft-capped after the output layer) is run whole, and only its cross-entropy is chunked.
    """
    model.eval()
    device = _device(model)
    network = model.model if isinstance(model, AdaptedModel) else model
    loss_sum = 0.0
    tokens = examples = 0
    split: LMHeadSplit | None = None
    checked = False
    with torch.inference_mode():
        for batch in batches() if callable(batches) else batches:
            target = batch["labels"].to(device)
            inputs = {key: value.to(device) for key, value in batch.items() if key != "labels"}
            if not checked:
                split, checked = split_lm_head(network, inputs), True
            if split is not None:
                total, count = lm_loss_sum(split, inputs, target, chunk_rows)
            else:
                logits = model(**inputs).logits
                if logits.ndim != 3 or tuple(logits.shape[:2]) != tuple(target.shape):
                    raise FedloraError(
                        f"evaluate_lm needs per-token logits (batch x length x vocab) matching "
                        f"the labels {tuple(target.shape)}, got {tuple(logits.shape)}"
                    )
                rows, targets = _labelled_rows(logits, target)
                del logits
                size = _chunk_size(int(rows.shape[-1]), chunk_rows)
                total, count = _chunked_cross_entropy(rows, targets, _identity, size), len(targets)
            loss_sum += float(total)
            tokens += count
            examples += int(target.shape[0])
    if tokens == 0:
        raise FedloraError("evaluate_lm: the batches had no labelled tokens")
    loss = loss_sum / tokens
    return LMEvalResult(
        loss=loss, perplexity=math.exp(min(loss, 700.0)), tokens=tokens, examples=examples
    )


@dataclass(frozen=True)
class LMHeadSplit:
    """A causal LM as its decoder (to the last hidden states) and its output layer."""

    decoder: nn.Module
    head: nn.Module
    vocabulary: int

    def hidden(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """The last hidden states (``batch x length x hidden``) of ``inputs``."""
        hidden = self.decoder(**inputs, use_cache=False)[0]
        if not isinstance(hidden, Tensor):
            raise FedloraError(f"the decoder returned {type(hidden).__name__}, not hidden states")
        return hidden


_SPLITS: WeakKeyDictionary[nn.Module, LMHeadSplit | None] = WeakKeyDictionary()


def lm_loss_sum(
    split: LMHeadSplit, inputs: Mapping[str, Tensor], labels: Tensor, chunk_rows: int | None
) -> tuple[Tensor, int]:
    """The summed next-token cross-entropy of a causal LM's labelled tokens, and their number.

    ``inputs`` are the model's inputs without the ``labels`` (``batch x length``, ``-100`` where a
    position does not count); the logits at ``t`` are scored against ``labels[t + 1]``.  The
    output layer sees the labelled positions' hidden states only, ``chunk_rows`` at a time
    (default: :data:`LOSS_CHUNK_ELEMENTS` float32 logits); see :func:`_chunked_cross_entropy`.
    """
    rows, targets = _labelled_rows(split.hidden(inputs), labels)
    size = _chunk_size(split.vocabulary, chunk_rows)
    return _chunked_cross_entropy(rows, targets, split.head, size), int(targets.shape[0])


def split_lm_head(network: Any, inputs: Mapping[str, Tensor]) -> LMHeadSplit | None:
    """The model's decoder and output layer, if they give its own logits; else ``None``.

    Hugging Face causal LMs (``get_decoder``, ``get_output_embeddings``) compute their logits as
    ``output_layer(decoder(inputs)[0])``, except a few that scale or soft-cap them afterwards
    (Gemma-2's ``final_logit_softcapping``, Cohere's ``logit_scale``, Granite's
    ``logits_scaling``, ...).  Rather than list those, the split is checked once per model on
    the first example of ``inputs`` (at most 16 tokens) against the model's own logits, and
    remembered.  The check runs in eval mode (no dropout), whatever mode the model is in.
    """
    if not isinstance(network, nn.Module):
        return None
    if network in _SPLITS:
        return _SPLITS[network]
    split: LMHeadSplit | None = None
    get_decoder = getattr(network, "get_decoder", None)
    get_head = getattr(network, "get_output_embeddings", None)
    if callable(get_decoder) and callable(get_head):
        decoder, head = get_decoder(), get_head()
        if (
            isinstance(decoder, nn.Module)
            and isinstance(head, nn.Module)
            and decoder is not network
        ):
            vocabulary = _same_logits(network, decoder, head, inputs)
            if vocabulary:
                split = LMHeadSplit(decoder, head, vocabulary)
    _SPLITS[network] = split
    return split


def _same_logits(
    network: nn.Module, decoder: nn.Module, head: nn.Module, inputs: Mapping[str, Tensor]
) -> int:
    """The vocabulary size if ``head(decoder(...))`` gives the model's logits, else 0."""
    width = min(16, int(inputs["input_ids"].shape[1]))
    sample = {key: value[:1, :width] for key, value in inputs.items()}
    modes = [(module, module.training) for module in network.modules()]
    network.eval()
    try:
        with torch.inference_mode():
            expected = network(**sample).logits.float()
            got = head(LMHeadSplit(decoder, head, 0).hidden(sample)).float()
    except (TypeError, ValueError, AttributeError, IndexError, RuntimeError, FedloraError):
        return 0
    finally:
        for module, mode in modes:  # parents first, so that every module gets its own mode back
            module.train(mode)
    if got.shape != expected.shape:
        return 0
    scale = max(1.0, float(expected.abs().max()))
    return int(expected.shape[-1]) if (got - expected).abs().max() <= 1e-3 * scale else 0


def _labelled_rows(states: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The rows of ``states`` (``batch x length x ...``) at the positions ``t`` whose next label
    ``labels[t + 1]`` is not ``-100``, and those labels: a causal LM's shifted targets."""
    shifted = labels[:, 1:]
    kept = shifted != -100
    return states[:, :-1][kept], shifted[kept]


def _chunk_size(vocabulary: int, chunk_rows: int | None) -> int:
    if chunk_rows is None:
        return max(1, LOSS_CHUNK_ELEMENTS // vocabulary)
    if isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise FedloraError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    return chunk_rows


def _chunked_cross_entropy(
    rows: Tensor, targets: Tensor, scores: Callable[[Tensor], Tensor], chunk_rows: int
) -> Tensor:
    """The summed cross-entropy of ``scores(rows)`` against ``targets``, ``chunk_rows`` rows at
    a time, each chunk's logits upcast to float32 (the float32 sum of float64 partial sums).

    Under autograd every chunk is checkpointed (``torch.utils.checkpoint``, non-reentrant): its
    forward keeps only its scalar loss and its inputs (a slice of ``rows``), and the backward
    recomputes that chunk's logits, takes their gradient and frees both before the next chunk.
    This costs one more forward of the output layer per chunk.  A custom ``autograd.Function``
    that takes the gradients during the forward pass would save that recomputation, but it would
    have to name and differentiate the output layer's trainable parameters itself (a LoRA or a
    ``modules_to_save`` wrapper on the head, tied weights, dropout); checkpointing leaves all of
    that to autograd for any ``scores`` module, and replays the forward's RNG state, so that a
    dropout in the head draws the same mask when recomputed.
    """
    total = torch.zeros((), dtype=torch.float64, device=rows.device)
    recompute = torch.is_grad_enabled()
    for start in range(0, int(rows.shape[0]), chunk_rows):
        chunk = (rows[start : start + chunk_rows], targets[start : start + chunk_rows])
        if recompute:
            part = checkpoint(_summed_cross_entropy, scores, *chunk, use_reentrant=False)
        else:
            part = _summed_cross_entropy(scores, *chunk)
        total = total + part.double()
    return total.float()


def _summed_cross_entropy(
    scores: Callable[[Tensor], Tensor], rows: Tensor, targets: Tensor
) -> Tensor:
    logits = scores(rows).float()  # on the output layer's device, as a model split over devices
    return torch.nn.functional.cross_entropy(logits, targets.to(logits.device), reduction="sum")


def _identity(rows: Tensor) -> Tensor:
    return rows


def macro_f1(predictions: Tensor, labels: Tensor) -> float:
    """Unweighted mean of per-class F1 over the classes present in the labels or predictions.

    A class nobody predicted and nobody has is not counted (it has no defined F1); a class that is
    predicted but absent from the labels, or present but never predicted, counts with F1 = 0.
    Per class ``F1 = 2 TP / (2 TP + FP + FN)``, which equals the harmonic mean of precision and
    recall and is well defined for every counted class.
    """
    if predictions.shape != labels.shape or labels.numel() == 0:
        raise FedloraError(
            f"macro_f1 needs equal non-empty shapes, got {tuple(predictions.shape)} and "
            f"{tuple(labels.shape)}"
        )
    scores = []
    for cls in torch.unique(torch.cat([predictions, labels])):
        predicted = predictions == cls
        actual = labels == cls
        tp = int((predicted & actual).sum())
        fp = int((predicted & ~actual).sum())
        fn = int((~predicted & actual).sum())
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def _optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if not params:
        raise FedloraError("train_local: the active adapter has no trainable parameters")
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _plan(batches: Batches, config: TrainConfig) -> tuple[Iterator[list[Batch]], int | None]:
    """The stream of steps (their batches) over all epochs and, where known in advance, the
    number of steps."""
    first = batches() if callable(batches) else batches
    per_step = config.gradient_accumulation_steps
    if config.steps is not None:
        total: int | None = config.steps
    elif isinstance(first, Sized):
        total = -(-len(first) // per_step) * (config.epochs or 1)
    else:
        total = None
    if total is None and config.schedule != "constant":
        raise ConfigError(
            f"train.schedule {config.schedule!r} with epochs needs batches with a length "
            f"(a list, a DataLoader, or a function returning one)"
        )
    return _stream(batches, first, config.epochs, per_step), total


def _stream(
    batches: Batches, first: Iterable[Batch], epochs: int | None, per_step: int
) -> Iterator[list[Batch]]:
    """Epoch after epoch (forever when ``epochs`` is None: the caller counts steps), the batches
    of each epoch in steps of ``per_step``."""
    epoch = 0
    current = first
    while epochs is None or epoch < epochs:
        seen = False
        step: list[Batch] = []
        for batch in current:
            seen = True
            step.append(batch)
            if len(step) == per_step:
                yield step
                step = []
        if step:
            yield step
        if not seen:
            raise FedloraError(
                f"train_local: epoch {epoch + 1} had no batches; pass a list or a function that "
                f"returns fresh batches, not a one-shot iterator"
            )
        epoch += 1
        if epochs is None or epoch < epochs:
            current = batches() if callable(batches) else batches


def _loss_shares(step: list[Batch]) -> list[float]:
    """Each batch's share of a step's examples, or of its labelled tokens for per-token labels
    (which a causal LM shifts: the first position of a row predicts nothing)."""
    counts = []
    for batch in step:
        labels = batch.get("labels")
        if not isinstance(labels, Tensor):
            counts.append(1)  # the model returns no loss for it, which :func:`_loss` reports
        elif labels.ndim >= 2:
            counts.append(int((labels[..., 1:] != -100).sum()))
        else:
            counts.append(int(labels.shape[0]))
    total = sum(counts)
    return [count / total if total else 1.0 / len(step) for count in counts]


def _is_causal_lm(network: nn.Module) -> bool:
    """Whether ``network`` is a Hugging Face causal LM, whose loss for per-token labels is the
    shifted next-token cross-entropy (a token classifier's or a masked LM's is not shifted)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = getattr(network, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return False
    return (
        getattr(network, "loss_type", None) == "ForCausalLM"
        or type(network).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    )


def _token_labels(inputs: Mapping[str, Tensor]) -> Tensor | None:
    """The batch's labels if they are per token (``batch x length``, like ``input_ids``)."""
    labels, ids = inputs.get("labels"), inputs.get("input_ids")
    if isinstance(labels, Tensor) and isinstance(ids, Tensor) and labels.shape == ids.shape:
        return labels if labels.ndim == 2 else None
    return None


def _without_labels(inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {key: value for key, value in inputs.items() if key != "labels"}


def _loss(output: Any) -> Tensor:
    loss = getattr(output, "loss", None)
    if not isinstance(loss, Tensor):
        raise FedloraError("train_local: the model returned no loss; batches need 'labels'")
    return loss


def _device(model: AdaptedModel | Classifier) -> torch.device:
    if isinstance(model, AdaptedModel):
        return model.device
    if isinstance(model, nn.Module):
        return next(model.parameters()).device
    return torch.device("cpu")
