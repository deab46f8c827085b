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
