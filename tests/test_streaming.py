"""Engine.stream and Engine.chat: the same tokens and stats as generate, early stop, templates."""

from __future__ import annotations

import threading

import pytest
import torch

import fiddler_nb as fnb
from fiddler_nb.runtime.generation.chat import chat_prompt_ids
from fiddler_nb.runtime.errors import FiddlerError
from fiddler_nb.runtime.model.tiny import CHAT_TEMPLATE

PROMPT = "The quick brown fox"
NEW = 12


@pytest.fixture()
def engine(mixtral_path):
    return fnb.load(mixtral_path, expert_budget=8, placement="layer-balanced", execution="cpu")


def stream_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "fiddler-nb-stream"]


def test_stream_gives_the_tokens_text_and_stats_of_generate(engine):
    want = engine.generate(PROMPT, NEW)
    stream = engine.stream(PROMPT, NEW)
    pieces = list(stream)
    got = stream.result
    assert torch.equal(got.token_ids, want.token_ids), "stream produced other tokens"
    assert "".join(pieces) == want.text == got.text
    for phase in ("prefill", "decode"):
        a, b = getattr(got.stats, phase), getattr(want.stats, phase)
        assert (a.tokens, a.resident_pairs, a.cpu_pairs, a.transfer_pairs) == \
            (b.tokens, b.resident_pairs, b.cpu_pairs, b.transfer_pairs), phase
    assert [e.token_id for e in stream.events] == want.token_ids[0].tolist()
    per_token = sum(e.resident + e.cpu + e.transfer for e in stream.events)
    all_pairs = sum(sum(p.resident_pairs) + sum(p.cpu_pairs) + sum(p.transfer_pairs)
                    for p in (got.stats.prefill, got.stats.decode))
    assert per_token == all_pairs, "per-token expert pairs do not add up to the stats"
    assert stream.events[0].phase == "prefill" and stream.events[1].phase == "decode"
    assert stream.tokens_per_s() > 0 and not stream_threads()


def test_breaking_out_stops_generation_and_leaves_the_engine_usable(engine):
    before = engine.generate(PROMPT, NEW).token_ids
    stream = engine.stream(PROMPT, 500)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    assert not stream_threads(), "the generation thread is still running"
    assert stream.result is not None and 3 <= stream.result.stats.new_tokens < 500
    assert torch.equal(engine.generate(PROMPT, NEW).token_ids, before), \
        "generate after an early stop gave other tokens"
    assert list(stream) == [], "a closed stream yields nothing more"


def test_close_without_iterating_and_context_manager(engine):
    with engine.stream(PROMPT, NEW) as stream:
        first = next(iter(stream))
    assert first and not stream_threads()
    engine.stream(PROMPT, NEW).close()  # never started: nothing to join
    assert engine.generate(PROMPT, 2).stats.new_tokens == 2


def test_stream_refuses_batches_and_passes_errors_through(engine):
    with pytest.raises(FiddlerError, match="one sequence"):
        engine.stream(["a", "b"], NEW)
    with pytest.raises(FiddlerError, match="one sequence"):
        engine.stream(PROMPT, NEW, num_beams=2)
    with pytest.raises(fnb.InputError, match="empty"):  # raised in the worker, re-raised here
        list(engine.stream(torch.zeros((1, 0), dtype=torch.long), NEW))
    assert not stream_threads()


def test_chat_applies_the_template(engine):
    messages = [{"role": "user", "content": "Hi there"}]
    ids = chat_prompt_ids(engine, messages)
    assert engine.tokenizer.decode(ids[0]) == "<s>user\nHi there</s>\n<s>assistant\n"
    assert ids[0, 0].item() == engine.tokenizer.bos_token_id  # special tokens, not bytes
    res = engine.chat(messages, NEW)
    want = engine.generate(ids, NEW)
    assert torch.equal(res.token_ids, want.token_ids) and res.text == want.text[0]
    assert isinstance(res, fnb.GenerationResult)
    streamed = "".join(engine.chat("Hi there", NEW, stream=True))  # a str is one user message
    assert streamed == res.text


def test_chat_without_a_template_says_how_to_pass_one(engine):
    engine.tokenizer.chat_template = None
    with pytest.raises(FiddlerError) as err:
        engine.chat("hello", NEW)
    assert "chat_template=" in str(err.value) and "\n" not in str(err.value)
    res = engine.chat("hello", NEW, chat_template=CHAT_TEMPLATE)
    # <s>user\nhello</s>\n<s>assistant\n: three special tokens plus one token per byte
    assert res.stats.prompt_tokens == 3 + len("user\nhello\nassistant\n")


def test_chat_checks_messages(engine):
    for bad in ([], [{"role": "user"}], ["hello"]):
        with pytest.raises(FiddlerError):
            engine.chat(bad, NEW)
