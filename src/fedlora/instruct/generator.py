"""A built-in generator of heterogeneous instruction tasks that needs no download.

Ten task families: nine procedural ones (reverse, sort, count, extract, arithmetic, format
conversion, case, filter, string operations) and topic labelling from the local AG News /
DBpedia-14 copies when a data directory holds them.  Each family has several *modes* (operations
or parameters) and each mode several instruction *wordings*; every (mode, wording) pair is one
task named ``family.mode.wording``, so a task's expected output can be recomputed from its name
and input.  Outputs are short and exactly checkable.

Each task carries its metric.  Rouge-L (partial credit) scores only the tasks whose answers it
sees whole (lower-case words and digits, its own normal form) and whose input holds none of the
answer, so copying it earns nothing: counts, and words spelt backwards.  Every other task is
scored by exact match, case- and symbol-sensitive: its answer is made of the input's own words
or numbers (sorted, filtered, extracted, reordered, re-cased, joined by other separators,
reformatted as JSON or a date, an operand of ``x * 1``) or differs from a wrong answer only in
what Rouge-L drops (a minus sign, capitals, a label's punctuation).

Determinism: only ``np.random.default_rng``.  The task order depends on ``seed`` alone (asking for
more tasks extends the list), and each task's examples depend on ``(seed, task name)`` alone.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedlora.data.loaders import DATA_ENV, load_named_dataset
from fedlora.errors import ConfigError
from fedlora.instruct.examples import InstructionData, InstructionExample
from fedlora.instruct.metrics import EXACT_MATCH, ROUGE_L

Maker = Callable[[np.random.Generator], tuple[str, str]]

_WORD_TEXT = """
    apple river stone cloud garden window pencil candle forest bridge mountain silver orange
    yellow purple rabbit turtle dragon castle market basket planet rocket engine button
    mirror ladder pillow blanket kitchen letter number camera guitar piano violin drum
    summer winter autumn spring morning evening night island ocean desert valley meadow
    tiger lion zebra horse sheep goat eagle falcon parrot salmon shark whale spider ant
    bread cheese butter honey pepper sugar coffee tea juice water lemon cherry grape melon
    chair table sofa lamp clock door floor roof wall paper book story poem song dance
    simple quick bright quiet gentle brave clever happy lucky early late small large tiny
    sun moon star comet storm rain snow wind fog ice fire smoke ash dust sand clay glass
    copper iron gold metal wood cotton silk wool leather paint brush canvas frame picture
    doctor farmer pilot sailor singer writer baker tailor hunter miner
"""
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())
_MONTH_TEXT = (
    "January February March April May June July August September October November December"
)
MONTHS: tuple[str, ...] = tuple(_MONTH_TEXT.split())

TOPIC_SOURCES = ("ag_news", "dbpedia_14")
TASK_FAMILIES = (
    "reverse",
    "sort",
    "count",
    "extract",
    "arithmetic",
    "format",
    "case",
    "filter",
    "string",
    "topic",
)


@dataclass(frozen=True)
class _Mode:
    family: str
    mode: str
    wordings: tuple[str, ...]
    make: Maker
    metric: str


def _words(rng: np.random.Generator, lo: int, hi: int) -> list[str]:
    n = int(rng.integers(lo, hi + 1))
    return [WORDS[i] for i in rng.choice(len(WORDS), size=n, replace=False)]


def _unique_extreme(rng: np.random.Generator, longest: bool) -> tuple[str, str]:
    while True:
        words = _words(rng, 4, 8)
        lengths = [len(w) for w in words]
        target = max(lengths) if longest else min(lengths)
        if lengths.count(target) == 1:
            return " ".join(words), words[lengths.index(target)]


def _with_numbers(rng: np.random.Generator) -> tuple[str, str]:
    words = _words(rng, 3, 7)
    numbers = [str(int(x)) for x in rng.integers(0, 1000, size=int(rng.integers(1, 5)))]
    tokens: list[str] = list(words)
    for num in numbers:  # insert in order at increasing positions so their order is preserved
        tokens.insert(int(rng.integers(0, len(tokens) + 1)), f"#{num}")
    ordered = [t[1:] for t in tokens if t.startswith("#")]
    return " ".join(t.lstrip("#") for t in tokens), " ".join(ordered)


def _arith(op: str, lo: int, hi: int) -> Maker:
    def make(rng: np.random.Generator) -> tuple[str, str]:
        a, b = (int(x) for x in rng.integers(lo, hi + 1, size=2))
        result = {"+": a + b, "-": a - b, "*": a * b}[op]
        return f"{a} {op} {b}", str(result)

    return make


def _date(rng: np.random.Generator) -> tuple[int, int, int]:
    return int(rng.integers(1950, 2031)), int(rng.integers(1, 13)), int(rng.integers(1, 29))


def _iso_to_long(rng: np.random.Generator) -> tuple[str, str]:
    y, m, d = _date(rng)
    return f"{y:04d}-{m:02d}-{d:02d}", f"{MONTHS[m - 1]} {d}, {y}"


def _long_to_iso(rng: np.random.Generator) -> tuple[str, str]:
    y, m, d = _date(rng)
    return f"{MONTHS[m - 1]} {d}, {y}", f"{y:04d}-{m:02d}-{d:02d}"


def _iso_to_dmy(rng: np.random.Generator) -> tuple[str, str]:
    y, m, d = _date(rng)
    return f"{y:04d}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y:04d}"


def _list_to_json(rng: np.random.Generator) -> tuple[str, str]:
    words = _words(rng, 2, 6)
    return ", ".join(words), json.dumps(words)


def _json_to_list(rng: np.random.Generator) -> tuple[str, str]:
    words = _words(rng, 2, 6)
    return json.dumps(words), ", ".join(words)


def _pairs_to_json(rng: np.random.Generator) -> tuple[str, str]:
    keys = _words(rng, 2, 4)
    values = [int(v) for v in rng.integers(0, 100, size=len(keys))]
    text = ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
    return text, json.dumps(dict(zip(keys, values, strict=True)))


def _mixed_case(rng: np.random.Generator) -> list[str]:
    return ["".join(c.upper() if rng.random() < 0.4 else c for c in w) for w in _words(rng, 3, 7)]


def _case(kind: str) -> Maker:
    def make(rng: np.random.Generator) -> tuple[str, str]:
        words = _mixed_case(rng)
        if kind == "upper":
            out = [w.upper() for w in words]
        elif kind == "lower":
            out = [w.lower() for w in words]
        else:
            out = [w[:1].upper() + w[1:].lower() for w in words]
        return " ".join(words), " ".join(out)

    return make


def _dedupe(rng: np.random.Generator) -> tuple[str, str]:
    base = _words(rng, 3, 5)
    tokens = base + [base[int(i)] for i in rng.integers(0, len(base), size=int(rng.integers(2, 5)))]
    order = rng.permutation(len(tokens))
    shuffled = [tokens[int(i)] for i in order]
    return " ".join(shuffled), " ".join(dict.fromkeys(shuffled))


def _starts_with(letter: str) -> Maker:
    starting = [w for w in WORDS if w.startswith(letter)]

    def make(rng: np.random.Generator) -> tuple[str, str]:
        words = _words(rng, 4, 8)
        if not any(w.startswith(letter) for w in words):
            words[int(rng.integers(0, len(words)))] = starting[int(rng.integers(0, len(starting)))]
        return " ".join(words), " ".join(w for w in words if w.startswith(letter))

    return make


def _longer_than(k: int) -> Maker:
    long_words = [w for w in WORDS if len(w) > k]

    def make(rng: np.random.Generator) -> tuple[str, str]:
        words = _words(rng, 4, 8)
        if not any(len(w) > k for w in words):
            candidates = [w for w in long_words if w not in words]
            words[int(rng.integers(0, len(words)))] = candidates[
                int(rng.integers(0, len(candidates)))
            ]
        return " ".join(words), " ".join(w for w in words if len(w) > k)

    return make


def _sentence_op(fn: Callable[[list[str]], str], lo: int = 3, hi: int = 8) -> Maker:
    def make(rng: np.random.Generator) -> tuple[str, str]:
        words = _words(rng, lo, hi)
        return " ".join(words), fn(words)

    return make


def _comma_count(rng: np.random.Generator) -> tuple[str, str]:
    words = _words(rng, 2, 12)
    return ", ".join(words), str(len(words))


def _max_number(rng: np.random.Generator) -> tuple[str, str]:
    nums = [int(x) for x in rng.choice(1000, size=int(rng.integers(3, 8)), replace=False)]
    return ", ".join(map(str, nums)), str(max(nums))


def _letter_count(letter: str) -> Callable[[list[str]], str]:
    return lambda words: str(" ".join(words).count(letter))


def _camel(words: list[str]) -> str:
    return words[0] + "".join(w.capitalize() for w in words[1:])


def _procedural_modes() -> list[_Mode]:
    m: list[_Mode] = []

    def add(family: str, mode: str, make: Maker, *wordings: str, metric: str = EXACT_MATCH) -> None:
        m.append(_Mode(family, mode, wordings, make, metric))

    add(
        "reverse",
        "order",
        _sentence_op(lambda w: " ".join(reversed(w))),
        "Reverse the order of the words in the input.",
        "Write the words of the sentence in reverse order.",
        "List the words of the input backwards, starting from the last word.",
    )
    add(
        "reverse",
        "letters",
        _sentence_op(lambda w: " ".join(x[::-1] for x in w)),
        "Reverse the letters of each word, keeping the words in their order.",
        "Spell every word backwards but do not change the order of the words.",
        "Write each word with its characters reversed.",
        metric=ROUGE_L,
    )
    add(
        "sort",
        "alpha",
        _sentence_op(lambda w: " ".join(sorted(w))),
        "Sort the words alphabetically.",
        "Put these words in alphabetical order, separated by spaces.",
        "Arrange the words from A to Z.",
    )
    add(
        "sort",
        "desc",
        _sentence_op(lambda w: " ".join(sorted(w, reverse=True))),
        "Sort the words in reverse alphabetical order.",
        "Arrange the words from Z to A.",
        "Order the words alphabetically, descending.",
    )
    add(
        "sort",
        "length",
        _sentence_op(lambda w: " ".join(sorted(w, key=lambda x: (len(x), x)))),
        "Sort the words from shortest to longest; break ties alphabetically.",
        "Order the words by length, shortest first, alphabetical among equal lengths.",
        "Rearrange the words by increasing number of letters (ties in alphabetical order).",
    )
    add(
        "count",
        "items",
        _comma_count,
        "How many items are in this comma-separated list? Answer with a number.",
        "Count the items in the list.",
        "Give the number of entries in the list below.",
        metric=ROUGE_L,
    )
    add(
        "count",
        "words",
        _sentence_op(lambda w: str(len(w)), 2, 12),
        "How many words does the sentence have?",
        "Count the words in the input and answer with a number.",
        "Report the word count of the text.",
        metric=ROUGE_L,
    )
    for letter in "aeo":
        add(
            "count",
            f"letter_{letter}",
            _sentence_op(_letter_count(letter)),
            f"How many times does the letter '{letter}' appear in the text?",
            f"Count the occurrences of the letter {letter} in the input.",
            f"Give the number of '{letter}' characters in the sentence.",
            metric=ROUGE_L,
        )
    add(
        "extract",
        "longest",
        lambda rng: _unique_extreme(rng, True),
        "Which word in the input is the longest?",
        "Return the longest word of the sentence.",
        "Find the word with the most letters.",
    )
    add(
        "extract",
        "shortest",
        lambda rng: _unique_extreme(rng, False),
        "Which word in the input is the shortest?",
        "Return the shortest word of the sentence.",
        "Find the word with the fewest letters.",
    )
    add(
        "extract",
        "first",
        _sentence_op(lambda w: w[0]),
        "What is the first word of the sentence?",
        "Return only the first word of the input.",
        "Copy the opening word of the text.",
    )
    add(
        "extract",
        "last",
        _sentence_op(lambda w: w[-1]),
        "What is the last word of the sentence?",
        "Return only the final word of the input.",
        "Copy the closing word of the text.",
    )
    add(
        "extract",
        "numbers",
        _with_numbers,
        "Extract all the numbers from the text, in order, separated by spaces.",
        "List every number that appears in the input, keeping their order.",
        "Pull out the numbers in the sentence, in the order they occur.",
    )
    add(
        "extract",
        "max_number",
        _max_number,
        "Which is the largest number in the list?",
        "Return the maximum of these numbers.",
        "Find the biggest value in the comma-separated list.",
    )
    for op, name, lo, hi in (
        ("+", "add_small", 0, 20),
        ("+", "add_large", 100, 999),
        ("-", "sub_small", 0, 20),
        ("-", "sub_large", 100, 999),
        ("*", "mul_small", 0, 12),
        ("*", "mul_large", 10, 40),
    ):
        verb = {"+": "sum", "-": "difference", "*": "product"}[op]
        add(
            "arithmetic",
            name,
            _arith(op, lo, hi),
            f"Compute the {verb} and answer with the number only ({lo} to {hi} operands).",
            f"What is the result of this expression? Give the {verb} as an integer"
            f" (operands {lo}-{hi}).",
        )
    add(
        "format",
        "list_to_json",
        _list_to_json,
        "Convert the comma-separated list into a JSON list of strings.",
        "Rewrite the items as a JSON array.",
    )
    add(
        "format",
        "json_to_list",
        _json_to_list,
        "Convert the JSON list into a comma-separated list.",
        "Rewrite the JSON array as plain items separated by a comma and a space.",
    )
    add(
        "format",
        "iso_to_long",
        _iso_to_long,
        "Rewrite the date YYYY-MM-DD in the form 'Month D, YYYY'.",
        "Convert the ISO date into words, like 'March 4, 2021'.",
    )
    add(
        "format",
        "long_to_iso",
        _long_to_iso,
        "Rewrite the date in ISO format (YYYY-MM-DD).",
        "Convert the written date into the form YYYY-MM-DD.",
    )
    add(
        "format",
        "iso_to_dmy",
        _iso_to_dmy,
        "Rewrite the ISO date as DD/MM/YYYY.",
        "Convert the date YYYY-MM-DD into day/month/year with two-digit day and month.",
    )
    add(
        "format",
        "pairs_to_json",
        _pairs_to_json,
        "Convert the key=value pairs into a JSON object with integer values.",
        "Rewrite the assignments as a JSON dictionary.",
    )
    add(
        "case",
        "upper",
        _case("upper"),
        "Convert the text to upper case.",
        "Write the input in capital letters only.",
        "Rewrite every letter as a capital.",
    )
    add(
        "case",
        "lower",
        _case("lower"),
        "Convert the text to lower case.",
        "Write the input using small letters only.",
        "Rewrite every capital letter in lower case.",
    )
    add(
        "case",
        "title",
        _case("title"),
        "Convert the text to title case.",
        "Capitalise the first letter of every word and lower-case the rest.",
        "Rewrite each word with an initial capital.",
    )
    add(
        "filter",
        "dedupe",
        _dedupe,
        "Remove repeated words, keeping the first occurrence of each.",
        "Write each distinct word once, in the order it first appears.",
    )
    for letter in "scp":
        add(
            "filter",
            f"starts_{letter}",
            _starts_with(letter),
            f"Keep only the words that start with '{letter}', in their order.",
            f"List the words beginning with the letter {letter}.",
        )
    for k in (5, 6):
        add(
            "filter",
            f"longer_{k}",
            _longer_than(k),
            f"Keep only the words with more than {k} letters.",
            f"List, in order, the words longer than {k} characters.",
        )
    add(
        "string",
        "acronym",
        _sentence_op(lambda w: "".join(x[0] for x in w).upper()),
        "Form an acronym from the first letters of the words, in capitals.",
        "Write the upper-case initials of the words with no spaces.",
    )
    add(
        "string",
        "hyphen",
        _sentence_op(lambda w: "-".join(w)),
        "Join the words with hyphens instead of spaces.",
        "Turn the sentence into a single hyphen-separated string.",
    )
    add(
        "string",
        "snake",
        _sentence_op(lambda w: "_".join(w)),
        "Convert the words to snake_case.",
        "Join the words with underscores.",
    )
    add(
        "string",
        "camel",
        _sentence_op(_camel),
        "Convert the words to camelCase.",
        "Join the words into one identifier in lower camel case.",
    )
    add(
        "string",
        "char_count",
        _sentence_op(lambda w: str(sum(len(x) for x in w))),
        "How many letters does the text have, not counting spaces?",
        "Count the characters of the input, ignoring the spaces.",
        metric=ROUGE_L,
    )
    return m


_TOPIC_WORDINGS = (
    "Classify the {kind} into one of these categories: {labels}.",
    "Which category best describes the {kind}? Options: {labels}.",
    "Label the topic of the {kind}. Answer with one of: {labels}.",
    "Read the {kind} and name its category ({labels}).",
)
_TOPIC_KIND = {"ag_news": "news article", "dbpedia_14": "encyclopedia entry"}


def _topic_modes(data_dir: str | os.PathLike[str] | None) -> list[_Mode]:
    root = Path(data_dir) if data_dir is not None else None
    if root is None and os.environ.get(DATA_ENV):
        root = Path(os.environ[DATA_ENV])
    if root is None:
        return []
    modes = []
    for source in TOPIC_SOURCES:
        if not (root / source).is_dir():
            continue
        train, _ = load_named_dataset(source, data_dir=root)
        texts, labels, names = train.texts, train.labels, train.label_names

        def make(
            rng: np.random.Generator, t: list[str] = texts, y: object = labels, n: list[str] = names
        ) -> tuple[str, str]:
            i = int(rng.integers(0, len(t)))
            return " ".join(t[i].split()), n[int(np.asarray(y)[i])]

        wordings = tuple(
            w.format(kind=_TOPIC_KIND[source], labels=", ".join(names)) for w in _TOPIC_WORDINGS
        )
        modes.append(_Mode("topic", source, wordings, make, EXACT_MATCH))
    return modes


def generate_tasks(
    *,
    num_tasks: int,
    examples_per_task: int | tuple[int, int],
    seed: int,
    data_dir: str | os.PathLike[str] | None = None,
) -> InstructionData:
    """``num_tasks`` heterogeneous instruction tasks, each with its own instruction wording.

    ``examples_per_task`` is a count, or an inclusive ``(low, high)`` range drawn per task (uneven
    client sizes, as in Natural Instructions).  Topic-labelling tasks use the AG News / DBpedia-14
    copies in ``data_dir`` (else ``$FEDLORA_DATA``) and are left out when neither holds them.
    Tasks are ordered round-robin over the families (shuffled by ``seed``), so any prefix is mixed.
    """
    if isinstance(examples_per_task, tuple):
        low, high = examples_per_task
    else:
        low = high = examples_per_task
    if low < 1 or high < low:
        raise ConfigError(
            f"generate_tasks: examples_per_task must be >= 1 (or a range low <= high), "
            f"got {examples_per_task!r}"
        )
    modes = _procedural_modes() + _topic_modes(data_dir)
    available = _count(modes)
    if not 1 <= num_tasks <= available:
        raise ConfigError(
            f"generate_tasks: num_tasks must be in [1, {available}] here, got {num_tasks}"
        )
    order = _task_order(modes, np.random.default_rng(seed))[:num_tasks]
    examples = []
    for mode, w in order:
        name = f"{mode.family}.{mode.mode}.{w}"
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        size = int(rng.integers(low, high + 1))
        for _ in range(size):
            text, answer = mode.make(rng)
            examples.append(InstructionExample(mode.wordings[w], text, answer, name, mode.metric))
    return InstructionData(examples, "generated")


def available_task_count(*, data_dir: str | os.PathLike[str] | None = None) -> int:
    """The largest ``num_tasks`` :func:`generate_tasks` accepts with this ``data_dir``."""
    return _count(_procedural_modes() + _topic_modes(data_dir))


def _count(modes: list[_Mode]) -> int:
    return sum(len(m.wordings) for m in modes)


def _task_order(modes: list[_Mode], rng: np.random.Generator) -> list[tuple[_Mode, int]]:
    by_family: dict[str, list[tuple[_Mode, int]]] = {}
    for mode in modes:
        by_family.setdefault(mode.family, []).extend((mode, w) for w in range(len(mode.wordings)))
    queues = []
    for family in sorted(by_family):
        tasks = by_family[family]
        queues.append([tasks[int(i)] for i in rng.permutation(len(tasks))])
    queues = [queues[int(i)] for i in rng.permutation(len(queues))]
    order = []
    while any(queues):
        for queue in queues:
            if queue:
                order.append(queue.pop(0))
    return order
