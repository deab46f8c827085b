"""The console script prints text and a stats table; user errors are one line, exit status 2."""

from __future__ import annotations

from fiddler_nb.cli.main import main


def test_generate_prints_text_and_table(mixtral_path, capsys):
    rc = main(["generate", "--model", mixtral_path, "--prompt", "hi", "--max-new-tokens", "3",
               "--expert-budget", "4", "--placement", "first-layers", "--execution", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "resident experts: 4 of 32" in out
    assert "prefill" in out and "decode" in out


def test_bad_path_is_one_line(capsys, tmp_path):
    rc = main(["generate", "--model", str(tmp_path / "missing")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("fiddler-nb: error:") and "does not exist" in err
    assert "\n" not in err


def test_generate_takes_the_engine_options_of_fnb_load(mixtral_path, capsys):
    rc = main(["generate", "--model", mixtral_path, "--prompt", "hi", "--max-new-tokens", "2",
               "--expert-dtype", "int4", "--group-size", "32", "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "int4-g32" in out, out
    assert "random weights" not in out, "the gibberish note is for the tiny model only"


def test_chat_and_bench_take_the_same_options():
    from fiddler_nb.cli.main import build_parser

    parser = build_parser()
    for cmd in (["chat"], ["bench"]):
        args = parser.parse_args(cmd + ["--expert-dtype", "int8", "--group-size", "64",
                                        "--threads", "1", "--plan", "p.json"])
        expert = args.expert_dtype[0] if isinstance(args.expert_dtype, list) else args.expert_dtype
        assert (expert, args.group_size, args.threads, args.plan) == ("int8", 64, 1, "p.json")


def test_bench_reads_format_and_threads_from_a_plan(tmp_path):
    from fiddler_nb import PlanSettings
    from fiddler_nb.cli.bench import _format_and_threads
    from fiddler_nb.cli.main import build_parser
    from fiddler_nb.runtime.generation.plan_file import Plan
    from fiddler_nb.runtime.generation.workload import Workload

    plan = Plan("m", PlanSettings(0, "none", "cpu", 1, "int8"), Workload(), (), "x", "cpu",
                "float32", "r", 8, 4, 1.0, 1.0)
    path = str(plan.save(tmp_path / "plan.json"))
    parser = build_parser()
    assert _format_and_threads(parser.parse_args(["bench", "--plan", path])) == ("int8", 1)
    explicit = parser.parse_args(["bench", "--plan", path, "--threads", "2", "--expert-dtype",
                                  "int4"])
    assert _format_and_threads(explicit) == ("int4", 2)


def test_error_hints_name_the_cli_way(capsys, tmp_path):
    for argv, want in ((["--threads", "0"], "leave --threads out"),
                       (["--expert-dtype", "int3"], "unknown --expert-dtype 'int3'"),
                       (["--plan", str(tmp_path / "none.json")], "`fiddler-nb autotune --out FILE`")):
        assert main(["generate", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert want in err and "fnb." not in err and "or None" not in err, err


def test_tiny_model_says_its_weights_are_random(capsys):
    assert main(["generate", "--prompt", "hi", "--max-new-tokens", "2"]) == 0
    assert "random weights" in capsys.readouterr().out


def test_plan_says_before_it_measures(capsys, monkeypatch):
    from fiddler_nb.measure import profiler

    said, real = [], profiler.profile_hardware

    def fake_profile(shape, quick=False):
        said.append(capsys.readouterr().out)  # what was printed before measuring
        return real("tiny", quick=True, tokens=(1, 8))

    monkeypatch.setattr(profiler, "profile_hardware", fake_profile)
    assert main(["plan", "--shape", "tiny", "--gpu-preset", "rtx-4090", "--budgets", "4"]) == 0
    assert "no --profile given: measuring this CPU" in said[0] and "--profile FILE" in said[0]


def test_profile_without_gpu_leaves_out_gpu_lines(capsys):
    import torch

    assert main(["profile", "--shape", "tiny", "--quick"]) == 0
    out = capsys.readouterr().out
    if not torch.cuda.is_available():
        assert "crossover n*" not in out and "skipped gpu" not in out
        assert "no GPU here" in out
    assert "median (interquartile range" in out


def test_saving_to_a_full_disk_is_one_line(capsys, tmp_path):
    import os

    if not os.path.exists("/dev/full"):
        return
    out = tmp_path / "prof.json"
    out.write_text("old")
    # a profile save that fails keeps the older file intact and prints one line
    from fiddler_nb import PlanSettings
    from fiddler_nb.runtime.errors import FileWriteError
    from fiddler_nb.runtime.generation.plan_file import Plan
    from fiddler_nb.runtime.generation.workload import Workload

    plan = Plan("m", PlanSettings(0, "none", "cpu", 1), Workload(), (), "x", "cpu", "float32",
                "r", 8, 4, 1.0, 1.0)
    try:
        plan.save("/dev/full")
    except FileWriteError as err:
        assert "could not write" in str(err) and "/dev/full" in str(err)
    else:
        raise AssertionError("a write to /dev/full must raise FileWriteError")
    assert out.read_text() == "old"
