"""Streaming in a notebook: `generate_live(eng, prompt)` and the chat box `chat(eng)`.

Pure parts that tests call directly: `status_line(stream)` (live tokens/s and expert pairs),
`render_history(messages)` (the chat as HTML) and `chat_turn(engine, history, text, ...)` (one
streamed assistant turn appended to a history). The widget classes build ipywidgets trees around
them: `LiveGeneration` (the text growing, a status line, and a bar per token of the expert-token
pairs its forward ran resident / on the CPU / after a transfer) and `ChatBox` (history, input,
Send and Stop; the answer streams in a background thread so Stop reaches the kernel).
"""

from __future__ import annotations

import html
import math
import threading
from typing import Any, Callable

from ..runtime.errors import InputError
from ..runtime.generation.stats import PATHS
from .plots import LANE_COLORS, TEMPLATE

CHAT_CLASS = "fnb-chat"  # on the chat box, for styling and browser tests
LIVE_CLASS = "fnb-live"
PATH_COLORS = {"resident": LANE_COLORS["gpu"], "cpu": LANE_COLORS["cpu"],
               "transfer": LANE_COLORS["transfer"]}
DEFAULT_CHAT_TOKENS = 128


# ---- pure parts ---------------------------------------------------------------------------
def status_line(stream: Any) -> str:
    """Tokens so far, live decode tokens/s, and the expert pairs of the prefill and of decode."""
    events = stream.events
    if not events:
        return "waiting for the first token (prefill)"
    pre = events[0]
    dec = {p: sum(getattr(e, p) for e in events[1:]) for p in PATHS}
    tps = stream.tokens_per_s()
    rate = "-" if math.isnan(tps) else f"{tps:.1f}"
    done = "done" if stream.result is not None else "streaming"
    return (f"{done}: {len(events)} tokens, decode {rate} tok/s; expert pairs prefill "
            f"{pre.resident} resident / {pre.cpu} cpu / {pre.transfer} transfer, decode "
            f"{dec['resident']} / {dec['cpu']} / {dec['transfer']}")


def render_history(messages: list[dict[str, str]]) -> str:
    """The conversation as HTML, one block per message (escaped; whitespace kept)."""
    blocks = [f"<div class='fnb-chat-msg fnb-chat-{html.escape(m['role'])}'>"
              f"<b>{html.escape(m['role'])}</b>: "
              f"<span style='white-space:pre-wrap'>{html.escape(m['content'])}</span></div>"
              for m in messages]
    return "<div class='fnb-chat-history'>" + "".join(blocks) + "</div>"


def chat_turn(engine: Any, history: list[dict[str, str]], text: str, max_new_tokens: int,
              on_piece: Callable[[str, Any], None] | None = None,
              on_start: Callable[[Any], None] | None = None,
              **generate_kwargs: Any) -> tuple[list[dict[str, str]], Any]:
    """Append the user's `text` and the streamed assistant answer; (new history, the stream).

    on_piece(reply_so_far, stream) runs after every piece; on_start(stream) before the first
    (the chat box keeps the stream to stop it).
    """
    if not text.strip():
        raise InputError("the message is empty; type something to send")
    asked = history + [{"role": "user", "content": text}]
    stream = engine.chat(asked, max_new_tokens, stream=True, **generate_kwargs)
    if on_start is not None:
        on_start(stream)
    reply = ""
    for piece in stream:
        reply += piece
        if on_piece is not None:
            on_piece(reply, stream)
    return asked + [{"role": "assistant", "content": reply}], stream


# ---- generate_live ------------------------------------------------------------------------
class LiveGeneration:
    """The widgets of one streamed generation; `result` once done."""

    def __init__(self, engine: Any, prompt: Any, max_new_tokens: int, **generate_kwargs: Any):
        import ipywidgets as w
        import plotly.graph_objects as go

        self.stream = engine.stream(prompt, max_new_tokens, **generate_kwargs)
        self.text = w.HTML(value="")
        self.status = w.HTML(value=status_line(self.stream))
        self.figure = go.FigureWidget()
        for path in PATHS:
            self.figure.add_bar(x=[], y=[], name=path, marker_color=PATH_COLORS[path])
        self.figure.update_layout(
            barmode="stack", template=TEMPLATE, height=300,
            title="Measured expert-token pairs per decode token (resident / cpu / transfer)",
            xaxis_title="new token", yaxis_title="expert-token pairs")
        self.widget = w.VBox([self.status, self.text, self.figure])
        self.widget.add_class(LIVE_CLASS)
        self.shown = False

    @property
    def result(self):
        return self.stream.result

    def run(self) -> "LiveGeneration":
        for _ in self.stream:
            self._update()
        self._update()
        return self

    def _update(self) -> None:
        self.text.value = f"<pre style='white-space:pre-wrap'>{html.escape(self.stream.text)}</pre>"
        self.status.value = html.escape(status_line(self.stream))
        decode = self.stream.events[1:]  # the first token's forward was the whole prefill
        with self.figure.batch_update():
            for trace, path in zip(self.figure.data, PATHS):
                trace.x = [e.index for e in decode]
                trace.y = [getattr(e, path) for e in decode]

    def _ipython_display_(self) -> None:
        if not self.shown:
            from IPython.display import display

            self.shown = True
            display(self.widget)


def generate_live(engine: Any, prompt: Any, max_new_tokens: int = 64, display: bool = True,
                  **generate_kwargs: Any) -> LiveGeneration:
    """Show the text growing with live tokens/s and per-token expert pairs; returns when done
    (`.result` is the GenerationResult). display=False builds and runs without showing."""
    live = LiveGeneration(engine, prompt, max_new_tokens, **generate_kwargs)
    if display:
        live._ipython_display_()
    return live.run()


# ---- chat ---------------------------------------------------------------------------------
class ChatBox:
    """History, an input line, Send and Stop, over `Engine.chat(..., stream=True)`."""

    def __init__(self, engine: Any, max_new_tokens: int = DEFAULT_CHAT_TOKENS,
                 system: str | None = None, **generate_kwargs: Any):
        import ipywidgets as w

        self.engine = engine
        self.max_new_tokens = max_new_tokens
        self.generate_kwargs = generate_kwargs
        self.history: list[dict[str, str]] = [{"role": "system", "content": system}] \
            if system else []
        self.stream = None
        self.thread: threading.Thread | None = None
        self.view = w.HTML(value=render_history(self.history))
        # the value syncs once, when the line loses focus to Send: typed keystrokes sync one
        # message at a time per widget (the rest buffered while the kernel is busy) but a click is
        # sent at once, so on a loaded kernel Send could arrive before the last letters
        self.input = w.Text(placeholder="Type a message, then Send", continuous_update=False,
                            layout=w.Layout(width="60%"))
        self.send_button = w.Button(description="Send", button_style="primary")
        self.stop_button = w.Button(description="Stop", disabled=True)
        self.status = w.HTML(value="")
        self.error = w.HTML(value="")
        self.send_button.on_click(lambda _: self.send())
        self.stop_button.on_click(lambda _: self.stop())
        self.widget = w.VBox([self.view, w.HBox([self.input, self.send_button, self.stop_button]),
                              self.status, self.error])
        self.widget.add_class(CHAT_CLASS)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def send(self, text: str | None = None, background: bool = True) -> None:
        """Send `text` (default: the input line); the answer streams into the history."""
        text = self.input.value if text is None else text
        if self.busy or not text.strip():
            return
        self.input.value = ""
        self.error.value = ""
        self.send_button.disabled, self.stop_button.disabled = True, False
        if background:
            self.thread = threading.Thread(target=self._turn, args=(text,), daemon=True,
                                           name="fiddler-nb-chat")
            self.thread.start()
        else:
            self._turn(text)

    def wait(self) -> None:
        """Block until the current answer is complete (tests, scripted notebooks)."""
        if self.thread is not None:
            self.thread.join()

    def stop(self) -> None:
        """Stop the answer being streamed (the engine stays usable)."""
        if self.stream is not None:
            self.stream.close()

    def _turn(self, text: str) -> None:
        shown = self.history + [{"role": "user", "content": text}]

        def on_piece(reply: str, stream: Any) -> None:
            self.view.value = render_history(shown + [{"role": "assistant", "content": reply}])
            self.status.value = html.escape(status_line(stream))

        self.view.value = render_history(shown)
        try:
            self.history, stream = chat_turn(
                self.engine, self.history, text, self.max_new_tokens, on_piece,
                on_start=lambda s: setattr(self, "stream", s), **self.generate_kwargs)
            self.view.value = render_history(self.history)
            self.status.value = html.escape(status_line(stream))
        except Exception as exc:  # noqa: BLE001 -- shown in the box, the cell never dies
            self.error.value = (f"<span style='color:#b00020'>error: {type(exc).__name__}: "
                                f"{html.escape(str(exc))}</span>")
        finally:
            self.stream = None
            self.send_button.disabled, self.stop_button.disabled = False, True


def chat(engine: Any, max_new_tokens: int = DEFAULT_CHAT_TOKENS, system: str | None = None,
         **generate_kwargs: Any) -> ChatBox:
    """A chat box over `engine` (its tokenizer's chat template; see Engine.chat)."""
    return ChatBox(engine, max_new_tokens, system, **generate_kwargs)
