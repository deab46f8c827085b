"""`fiddler-nb chat` driven through a pipe (and a real Ctrl-C), `fiddler-nb autotune --out`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import fiddler_nb as fnb
from fiddler_nb.cli.chat import ANSWER, STOPPED, chat_loop, fit_to_context
from fiddler_nb.cli.main import main

CHAT = [sys.executable, "-m", "fiddler_nb.cli", "chat"]
START_S = 120  # interpreter + torch + transformers import and model load on a busy 2-core box


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def test_cli_chat_through_a_pipe_answers_each_line_and_exits_on_eof(mixtral_path):
    proc = subprocess.run(CHAT + ["--model", mixtral_path, "--max-new-tokens", "4"],
                          input="hello\n\nhow are you?\n", capture_output=True, text=True,
                          timeout=START_S, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count(ANSWER) == 2, proc.stdout  # the empty line is skipped
    assert "Ctrl-D" in proc.stdout and "Traceback" not in proc.stderr


def test_ctrl_c_stops_the_answer_and_the_chat_goes_on(tmp_path):
    """A real SIGINT while an answer streams: '[stopped]', then the next line is answered --
    also when this process hands its children SIGINT ignored (pytest-xdist workers do; the chat
    installs its own handler). The model has 16 layers so an answer outlasts a busy machine's
    scheduling of this test's threads."""
    from fiddler_nb.runtime.model.tiny import make_tiny_checkpoint

    slow = str(make_tiny_checkpoint(tmp_path / "slow", "mixtral", num_hidden_layers=16))
    proc = subprocess.Popen(CHAT + ["--model", slow, "--max-new-tokens", "900"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(lambda: proc.stdout.read(1), "")),
                              daemon=True)
    reader.start()
    try:
        proc.stdin.write("first question\n")
        proc.stdin.flush()
        deadline = time.monotonic() + START_S
        while "".join(out).count(ANSWER) < 1 or len("".join(out).split(ANSWER)[-1]) < 3:
            assert time.monotonic() < deadline, "no streamed answer: " + "".join(out)
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.stdin.write("second\n")
        proc.stdin.close()  # end of input after the second answer
        assert proc.wait(timeout=START_S) == 0, proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    text = "".join(out)
    assert STOPPED in text, text[-500:]
    assert text.count(ANSWER) == 2, "the chat did not go on after Ctrl-C"


def test_chat_loop_keeps_history_and_survives_an_interrupted_answer(mixtral_path):
    eng = fnb.load(mixtral_path)
    lines = iter(["hi\n", "again\n", ""])
    written: list[str] = []
    interrupted = []

    def write(text: str) -> None:
        written.append(text)
        if not interrupted and text not in ("you> ", ANSWER, "\n"):
            interrupted.append(text)
            raise KeyboardInterrupt  # Ctrl-C while the first answer streams

    seen = []
    real_chat = eng.chat
    eng.chat = lambda history, *a, **k: (seen.append([dict(m) for m in history]),
                                         real_chat(history, *a, **k))[1]
    answers = chat_loop(eng, lambda: next(lines), write, max_new_tokens=6)
    assert answers == 2 and STOPPED in written
    assert [m["role"] for m in seen[1]] == ["user", "assistant", "user"]
    assert seen[1][1]["content"] == interrupted[0]  # what had streamed before Ctrl-C
    assert eng.generate("x", 2).stats.new_tokens == 2


def test_cli_autotune_saves_a_plan_that_load_and_generate_use(mixtral_path, tmp_path, capsys):
    out = tmp_path / "plan.json"
    rc = main(["autotune", "--model", mixtral_path, "--prompt-tokens", "8", "--new-tokens", "4",
               "--seconds", "20", "--threads", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file() and "meas. decode" in text and "reason:" in text
    plan = fnb.Plan.load(out)
    assert plan.settings.threads == 1 and plan.workload == fnb.Workload(8, 4)
    rc = main(["generate", "--model", mixtral_path, "--plan", str(out), "--max-new-tokens", "2"])
    assert rc == 0 and "resident experts" in capsys.readouterr().out


def test_cli_autotune_bad_plan_file_is_one_line(mixtral_path, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    rc = main(["generate", "--model", mixtral_path, "--plan", str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "not a fiddler_nb plan" in err and "\n" not in err


def test_chat_drops_the_oldest_turns_to_fit_the_context_and_refuses_one_too_long(mixtral_path):
    """A conversation that outgrows the context loses its oldest turns (said once), never the
    system message or the newest one; a single message longer than the context is refused in
    one line and the chat goes on."""
    eng = fnb.load(mixtral_path)
    limit = eng.max_context
    long_turn = "word " * (limit // 4)
    history = [{"role": "system", "content": "be brief"}]
    for i in range(6):
        history += [{"role": "user", "content": f"{i} {long_turn}"},
                    {"role": "assistant", "content": long_turn}]
    history.append({"role": "user", "content": "last"})
    dropped = fit_to_context(eng, history, max_new_tokens=8)
    assert dropped > 0 and history[0]["content"] == "be brief"
    assert history[1]["role"] == "user" and history[-1]["content"] == "last"
    from fiddler_nb.runtime.generation.chat import chat_prompt_ids

    assert chat_prompt_ids(eng, history).shape[1] + 8 <= limit
    lines = iter([long_turn * 8 + "\n", "short\n", ""])
    written: list[str] = []
    answers = chat_loop(eng, lambda: next(lines), written.append, max_new_tokens=4)
    text = "".join(written)
    assert answers == 1 and "[not answered:" in text and text.count(ANSWER) == 1
