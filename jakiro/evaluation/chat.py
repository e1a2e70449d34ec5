"""Multi-turn chat prompts for benchmark questions, through the project's one template mechanism.

``model.chat_template`` picks the format (see :mod:`jakiro.chat_templates`): ``auto`` (the tokenizer's own
template), ``vicuna`` / ``llama-2`` (FastChat), ``llama-3``. Turn t's prompt holds questions 1..t and the model's
own answers 1..t-1, followed by the assistant's generation prompt. ``llama-2`` prompts end with a space after
``[/INST]``, as in the reference's evaluation protocol.
"""

from __future__ import annotations

import torch

from jakiro.chat_templates import get_template


class ChatPrompter:
    """Builds token ids for a conversation and cleans generated answers."""

    def __init__(self, tokenizer, template: str = "auto", system_prompt: str | None = None):
        self.tokenizer = tokenizer
        self.template = get_template(template, tokenizer, system_prompt)

    def prompt_text(self, questions: list[str], answers: list[str]) -> str:
        """The prompt that asks ``questions[-1]`` after the earlier questions and ``answers``, as text."""
        if len(answers) != len(questions) - 1:
            raise ValueError(f"{len(questions)} questions need {len(questions) - 1} earlier answers, got "
                             f"{len(answers)}")
        messages = []
        for turn, question in enumerate(questions):
            messages.append({"role": "user", "content": question})
            if turn < len(answers):
                messages.append({"role": "assistant", "content": answers[turn]})
        text = self.template.render(messages, True)
        return text + " " if self.template.name == "llama-2" else text

    def input_ids(self, questions: list[str], answers: list[str]) -> torch.Tensor:
        """[1, P] ids of :meth:`prompt_text`."""
        text = self.prompt_text(questions, answers)
        return self.tokenizer(text, return_tensors="pt", add_special_tokens=self.template.add_special_tokens)[
            "input_ids"
        ]

    def answer_text(self, generated_ids: list[int]) -> str:
        """Decoded answer: special tokens removed, stripped."""
        return self.tokenizer.decode(generated_ids, skip_special_tokens=True).strip()
