"""Error hints for a terminal user: the library's messages name the Python way to fix things
(`expert_dtype=`, `or None`, `fnb.autotune(...).save(path)`); in the CLI the same message names
the option or command instead. One table, applied to the message the CLI prints.
"""

from __future__ import annotations

import re

# (pattern, replacement), applied in order; the first group of patterns rewrites whole phrases
CLI_HINTS: tuple[tuple[str, str], ...] = (
    (r"make one with fnb\.autotune\(\.\.\.\)\.save\(path\) or `fiddler-nb autotune --out`",
     "make one with `fiddler-nb autotune --out FILE`"),
    (r"make one with fnb\.autotune\(\.\.\.\)\.save\(path\)",
     "make one with `fiddler-nb autotune --out FILE`"),
    (r"re-run fnb\.autotune", "re-run `fiddler-nb autotune --out FILE`"),
    (r"load it with fnb\.load\(path, plan=plan\)", "pass it with --plan FILE"),
    (r"check the model loads and generates with fnb\.load\(path\)\.generate\('hi'\)",
     "check the model loads and generates with `fiddler-nb generate --model PATH`"),
    (r"--out FILE` or fnb\.profile_hardware\(\)", "--out FILE`"),
    (r"; or None for torch's own setting", "; or leave --threads out for torch's own setting"),
    (r"\(or None to keep the checkpoint's\)", "(or leave --expert-dtype out to keep the "
                                              "checkpoint's)"),
    (r"\(or None for the default\)", "(or leave --group-size out for the default)"),
    (r"pass expert_dtype='int4' with the group_size you want",
     "pass --expert-dtype int4 with the --group-size you want"),
    (r"pass 'cpu', 'cuda', 'cuda:N' or None", "pass --device cpu, cuda or cuda:N, or leave it out"),
    (r"pass device=None or device='cpu'", "leave --device out or pass --device cpu"),
    (r"or None \(what fits\)", "or 'fit' (what fits)"),
    # then option names: snake_case ones anywhere, plain words only where a message starts
    (r"\b(expert_dtype|group_size|expert_budget|gpu_memory|scratch_slots)\b=?",
     lambda m: "--" + m.group(1).replace("_", "-") + (" " if m.group(0).endswith("=") else "")),
    (r"^(threads|placement|execution) must", r"--\1 must"),
)


def cli_message(message: str) -> str:
    """`message` with its Python hints replaced by the CLI's."""
    for pattern, replacement in CLI_HINTS:
        message = re.sub(pattern, replacement, message)
    return message
