"""Alpaca prompts, chat messages, Rouge-L and exact match on known values, size weighting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedlora.errors import ConfigError
from fedlora.instruct import (
    InstructionExample,
    chat_messages,
    exact_match,
    format_prompt,
    normalize_answer,
    rouge_l,
    score_predictions,
    score_tasks,
    weighted_task_scores,
)

WITH_INPUT = InstructionExample("Reverse the words.", 'a {b} ["c"]', "c b a", "t")
NO_INPUT = InstructionExample("Say hi.", "", "hi", "t")


def test_alpaca_prompt_with_and_without_input() -> None:
    assert format_prompt(WITH_INPUT) == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        '### Instruction:\nReverse the words.\n\n### Input:\na {b} ["c"]\n\n### Response:\n'
    )
    assert format_prompt(NO_INPUT) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:\n"
    )
    assert format_prompt(NO_INPUT, with_response=True).endswith("### Response:\nhi")
    assert format_prompt(WITH_INPUT, "plain") == 'Reverse the words.\n\na {b} ["c"]\n\nAnswer: '
    with pytest.raises(ConfigError, match="unknown prompt template 'vicuna'"):
        format_prompt(NO_INPUT, "vicuna")


def test_chat_messages() -> None:
    assert chat_messages(WITH_INPUT) == [
        {"role": "user", "content": 'Reverse the words.\n\na {b} ["c"]'}
    ]
    assert chat_messages(NO_INPUT, with_response=True) == [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "hi"},
    ]


def test_rouge_l_known_values() -> None:
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("dog runs", "the cat sat") == 0.0
    # LCS(the cat lay on a mat, the cat sat on the mat) = "the cat on mat": P = R = 4/6
    assert rouge_l("the cat lay on a mat", "the cat sat on the mat") == pytest.approx(2 / 3)
    # prediction "b d e", reference "a b c d": LCS 2, P = 2/3, R = 1/2, F = 4/7
    assert rouge_l("b d e", "a b c d") == pytest.approx(4 / 7)
    # the order of the arguments matters for P and R but not for F; case and punctuation do not
    assert rouge_l("a b c d", "b d e") == pytest.approx(4 / 7)
    assert rouge_l("The Cat!", "the cat") == 1.0


def test_exact_match_normalises_whitespace_only() -> None:
    assert exact_match("  Hello \n  World ", "Hello World") == 1.0
    assert exact_match("Hello World", "hello world") == 0.0  # case is the answer of case tasks
    assert exact_match("hello world.", "hello world") == 0.0
    assert exact_match('["a", "b"]', "a, b") == 0.0  # and symbols that of format tasks
    assert exact_match("42", "4 2") == 0.0


_TEXT = st.text(alphabet=st.sampled_from('aB,. -_\n\t[]"Zé'), max_size=12)


@given(text=_TEXT, spacing=st.lists(st.sampled_from([" ", "  ", "\t", "\n "]), min_size=1))
def test_exact_match_ignores_how_words_are_spaced(text: str, spacing: list[str]) -> None:
    words = text.split()
    respaced = spacing[0] + "".join(
        w + spacing[(i + 1) % len(spacing)] for i, w in enumerate(words)
    )
    assert exact_match(respaced, text) == 1.0
    assert normalize_answer(respaced) == " ".join(words)


@given(text=_TEXT)
def test_exact_match_sees_every_change_of_case_or_symbol(text: str) -> None:
    assert exact_match(text, text) == 1.0
    if any(ch.isalpha() for ch in text):
        assert exact_match(text.swapcase(), text) == 0.0
    assert exact_match(text + "!", text) == 0.0
    if len(text.split()) > 1:
        assert exact_match("_".join(text.split()), text) == 0.0


def test_score_predictions_means() -> None:
    scores = score_predictions(["c b a", "nope"], ["c b a", "hi"])
    assert scores == {"rouge_l": 0.5, "exact_match": 0.5}
    with pytest.raises(ConfigError, match="2 predictions but 1 references"):
        score_predictions(["a", "b"], ["a"])


def test_weighted_task_scores_weights_task_means_by_data_size() -> None:
    per_task = {"t1": ([1.0, 1.0], 10), "t2": ([0.2], 30)}
    # (10 * 1.0 + 30 * 0.2) / 40; unweighted mean of means would be 0.6, pooled 2.2 / 3
    assert weighted_task_scores(per_task) == pytest.approx(0.4)
    assert weighted_task_scores({"t1": (1.0, 1), "t2": (0.0, 3)}) == pytest.approx(0.25)
    assert weighted_task_scores({"t1": (0.9, 0), "t2": (0.3, 5)}) == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("per_task", "match"),
    [
        ({}, "no tasks"),
        ({"t": ([], 3)}, "no scores"),
        ({"t": ([0.5], -1)}, "negative size"),
        ({"t": ([float("nan")], 2)}, "non-finite"),
        ({"t": (0.5, 0)}, "all task sizes are zero"),
    ],
)
def test_weighted_task_scores_errors(
    per_task: dict[str, tuple[list[float] | float, int]], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        weighted_task_scores(per_task)


def test_score_tasks_scores_each_task_by_its_own_metric_weighted_by_size() -> None:
    examples = [
        InstructionExample("Upper-case it.", "ab cd", "AB CD", "case", "exact_match"),
        InstructionExample("Upper-case it.", "ef", "EF", "case", "exact_match"),
        InstructionExample("Spell backwards.", "ab cd", "ba dc", "back", "rouge_l"),
    ]
    predictions = ["ab cd", " EF ", "ba xx dc"]
    scores = score_tasks(examples, predictions, {"case": 10, "back": 30})
    # case: exact 0 and 1 (Rouge-L 1 and 1); back: Rouge-L P = 2/3, R = 1, F = 0.8 (exact 0)
    assert scores.by_task == {
        "case": {"score": 0.5, "rouge_l": 1.0, "exact_match": 0.5},
        "back": {"score": pytest.approx(0.8), "rouge_l": pytest.approx(0.8), "exact_match": 0.0},
    }
    assert scores.score == pytest.approx((10 * 0.5 + 30 * 0.8) / 40)
    assert scores.rouge_l == pytest.approx((10 * 1.0 + 30 * 0.8) / 40)
    assert scores.exact_match == pytest.approx(10 * 0.5 / 40)
    with pytest.raises(ConfigError, match="2 predictions but 3 examples"):
        score_tasks(examples, predictions[:2], {"case": 10, "back": 30})
    with pytest.raises(ConfigError, match=r"no task size for \['back'\]"):
        score_tasks(examples, predictions, {"case": 10})
