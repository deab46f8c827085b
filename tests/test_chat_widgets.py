"""Notebook streaming widgets (generate_live, chat box), the tuner's Auto-tune button and
plots.autotune -- driven by setting values and clicking, asserting on what the callbacks made."""

from __future__ import annotations

import threading
import time

import plotly.graph_objects as go
import pytest

import fiddler_nb as fnb
from fiddler_nb import tune
from fiddler_nb.notebook import chat_widgets, plots, widgets
from fiddler_nb.runtime.generation.plan_file import PlanRow


@pytest.fixture()
def engine(mixtral_path):
    return fnb.load(mixtral_path, expert_budget=8, placement="layer-balanced", execution="cpu")


def test_generate_live_shows_text_rate_and_pairs_per_token(engine):
    live = widgets.generate_live(engine, "Hello", max_new_tokens=6, display=False)
    res = live.result
    assert res is not None and res.stats.new_tokens == 6
    assert live.stream.text == res.text
    assert "done: 6 tokens" in live.status.value and "tok/s" in live.status.value
    xs = live.figure.data[0].x
    assert list(xs) == [1, 2, 3, 4, 5], "one bar per decode token"
    bars = sum(sum(t.y) for t in live.figure.data)
    decode = res.stats.decode
    assert bars == sum(decode.resident_pairs) + sum(decode.cpu_pairs) + sum(decode.transfer_pairs)


def test_chat_box_send_streams_an_answer_into_the_history(engine):
    box = widgets.chat(engine, max_new_tokens=5)
    box.input.value = "Hi <there>"
    box.send_button.click()  # answers in a background thread, as in a notebook
    box.wait()
    assert [m["role"] for m in box.history] == ["user", "assistant"]
    assert "Hi &lt;there&gt;" in box.view.value  # escaped
    assert box.history[1]["content"] == engine.chat("Hi <there>", 5).text
    assert box.input.value == "" and not box.send_button.disabled and box.stop_button.disabled
    assert "done: 5 tokens" in box.status.value and box.error.value == ""
    box.send("And again?", background=False)
    assert len(box.history) == 4


def test_chat_box_stop_ends_the_answer_and_the_engine_stays_usable(engine):
    box = widgets.chat(engine, max_new_tokens=800)
    box.send("Tell me everything")
    deadline = time.monotonic() + 60
    while box.stream is None or len(box.stream.events) < 3:
        assert time.monotonic() < deadline and box.busy, "no streamed tokens"
        time.sleep(0.01)
    box.stop_button.click()
    box.wait()
    answer = box.history[-1]["content"]
    assert box.history[-1]["role"] == "assistant" and len(answer) < 800
    assert not [t for t in threading.enumerate() if t.name.startswith("fiddler-nb-")]
    assert engine.generate("x", 3).stats.new_tokens == 3


def test_render_history_and_status_are_plain_functions():
    out = chat_widgets.render_history([{"role": "user", "content": "a < b"}])
    assert "fnb-chat-user" in out and "a &lt; b" in out
    with pytest.raises(ValueError, match="empty"):
        chat_widgets.chat_turn(None, [], "  ", 4)


def test_tuner_auto_tune_button_shows_table_and_plot(engine):
    tuner = widgets.tuner(engine, prompt_tokens=8, new_tokens=3)
    calls = []

    def fake_autotune(eng, workload, seconds):
        calls.append((workload, seconds))
        return fnb.autotune(eng, workload, seconds=seconds, threads=(1,), progress=False)

    tuner.autotune.autotune = fake_autotune
    tuner.autotune.seconds.value = 7
    tuner.autotune.button.click()
    assert calls == [(fnb.Workload(8, 3), 7.0)]
    plan = tuner.autotune.plan
    assert "meas. decode" in tuner.autotune.table.value
    fig = tuner.autotune.figure_box.children[0]
    assert isinstance(fig, go.FigureWidget) and len(fig.data) >= 2
    assert tuner.execution.value == plan.settings.execution and "auto-tuned" in tuner.status.value
    tuner.autotune.autotune = lambda *a, **k: (_ for _ in ()).throw(fnb.FiddlerError("boom"))
    tuner.autotune.button.click()
    assert "boom" in tuner.autotune.table.value


def test_plots_autotune_keeps_measured_and_projected_apart(engine):
    clock = {"t": 0.0}

    def measure(eng, workload, new_tokens):
        clock["t"] += 1
        return tune.Measured(100.0 * eng.config.threads, 10.0)

    def project(eng, workload, candidates):
        return {c: (50.0, 5.0) for c in candidates}, "fake projection"

    plan = fnb.autotune(engine, fnb.Workload(8, 3), seconds=100, threads=(2, 1), progress=False,
                        measure=measure, project=project, clock=lambda: clock["t"])
    fig = plots.autotune(plan)
    names = sorted(t.name for t in fig.data)
    assert names == ["decode (measured)", "decode (projected)", "prefill (measured)",
                     "prefill (projected)"]
    for t in fig.data:
        assert (t.marker.pattern.shape == "/") == ("projected" in t.name)
    assert "measured (solid), projected (hatched)" in fig.layout.title.text
    assert any(label.startswith("* ") for label in fig.data[0].y)
    assert isinstance(plan.rows[0], PlanRow)
