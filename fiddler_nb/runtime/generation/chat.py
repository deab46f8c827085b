"""`Engine.chat`: the next assistant turn of a conversation, through the tokenizer's chat template.

`messages` is a list of {"role": ..., "content": ...} dicts (a plain string is one user message).
The template (the checkpoint's, or `chat_template=` given here) renders the conversation with the
generation prompt for the assistant; the rendered text is tokenized without adding special tokens
again (the template writes them) and generated from as token ids, so `chat` and `generate` on
`chat_prompt_ids(...)` give the same tokens.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from jinja2 import TemplateError

from ..errors import InputError, OptionError, one_line

Messages = Sequence[dict[str, str]] | str
EXAMPLE_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\\n{% endfor %}"
                    "{% if add_generation_prompt %}assistant: {% endif %}")


def as_messages(messages: Messages) -> list[dict[str, str]]:
    """Validate a conversation; a plain string becomes one user message."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, (list, tuple)):
        raise InputError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts or "
                         f"a string, got {type(messages).__name__}")
    out = list(messages)
    if not out:
        raise InputError("messages is empty; pass e.g. [{'role': 'user', 'content': 'Hi'}]")
    for i, m in enumerate(out):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            raise InputError(f"message {i} is {m!r}; each message must be a dict with string "
                             "'role' and 'content', e.g. {'role': 'user', 'content': 'Hi'}")
    return out


def render(engine: Any, messages: Messages, chat_template: str | None = None) -> str:
    """The conversation as the template writes it, ending with the assistant's generation prompt."""
    tok = engine.tokenizer
    if tok is None:
        raise InputError(f"{engine.path} has no tokenizer; chat needs one with a chat template")
    if chat_template is not None and (not isinstance(chat_template, str) or not chat_template):
        raise OptionError(f"chat_template must be a Jinja template string, got "
                          f"{type(chat_template).__name__}; e.g. {EXAMPLE_TEMPLATE!r}")
    if chat_template is None and not getattr(tok, "chat_template", None):
        raise OptionError(f"{engine.path} has no chat template (no chat_template in its "
                          "tokenizer files); pass one as eng.chat(messages, chat_template="
                          f"{EXAMPLE_TEMPLATE!r}) or set eng.tokenizer.chat_template")
    conversation = as_messages(messages)
    try:
        text = tok.apply_chat_template(conversation, chat_template=chat_template,
                                       add_generation_prompt=True, tokenize=False)
    except TemplateError as err:  # a template the caller passed that Jinja cannot use
        raise OptionError(f"the chat template failed: {one_line(err)}; check its Jinja syntax "
                          f"(an example: {EXAMPLE_TEMPLATE!r})") from None
    if not text:
        raise InputError("the chat template rendered an empty prompt; check the template")
    return text


def chat_prompt_ids(engine: Any, messages: Messages,
                    chat_template: str | None = None) -> torch.Tensor:
    """[1, T] token ids of the rendered conversation."""
    text = render(engine, messages, chat_template)
    return engine.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


def chat(engine: Any, messages: Messages, max_new_tokens: int = 128, stream: bool = False,
         chat_template: str | None = None, **generate_kwargs: Any):
    """A GenerationResult for the new assistant turn, or (stream=True) a GenerationStream."""
    ids = chat_prompt_ids(engine, messages, chat_template)
    if stream:
        return engine.stream(ids, max_new_tokens, **generate_kwargs)
    result = engine.generate(ids, max_new_tokens, **generate_kwargs)
    if isinstance(result.text, list) and len(result.text) == 1:  # ids in: one string out
        from dataclasses import replace

        result = replace(result, text=result.text[0])
    return result
