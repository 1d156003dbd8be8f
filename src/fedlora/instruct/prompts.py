"""Prompt formatting: the Alpaca template (FlexLoRA's default) and chat messages."""

from __future__ import annotations

from fedlora.errors import ConfigError
from fedlora.instruct.examples import InstructionExample

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
PLAIN_WITH_INPUT = "{instruction}\n\n{input}\n\nAnswer: "
PLAIN_NO_INPUT = "{instruction}\n\nAnswer: "

PROMPT_TEMPLATES: dict[str, tuple[str, str]] = {
    "alpaca": (ALPACA_WITH_INPUT, ALPACA_NO_INPUT),
    "plain": (PLAIN_WITH_INPUT, PLAIN_NO_INPUT),
}
"""Template name -> ``(with input, without input)``; an example with an empty input uses the
second."""


def format_prompt(
    example: InstructionExample, template: str = "alpaca", *, with_response: bool = False
) -> str:
    """The prompt for ``example``; with ``with_response`` the target output is appended."""
    if template not in PROMPT_TEMPLATES:
        raise ConfigError(
            f"unknown prompt template {template!r}; "
            f"valid names: {', '.join(sorted(PROMPT_TEMPLATES))}"
        )
    with_input, no_input = PROMPT_TEMPLATES[template]
    if example.input.strip():
        prompt = with_input.format(instruction=example.instruction, input=example.input)
    else:
        prompt = no_input.format(instruction=example.instruction)
    return prompt + example.output if with_response else prompt


def chat_messages(
    example: InstructionExample, *, with_response: bool = False
) -> list[dict[str, str]]:
    """Messages for a model's chat template: the user turn holds the instruction and input."""
    content = example.instruction
    if example.input.strip():
        content = f"{content}\n\n{example.input}"
    messages = [{"role": "user", "content": content}]
    if with_response:
        messages.append({"role": "assistant", "content": example.output})
    return messages
