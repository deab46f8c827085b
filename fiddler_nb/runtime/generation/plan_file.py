"""`Plan`: the settings `fnb.autotune` chose for a workload, the table it measured, and why.

Not to be confused with `measure.planner.PlanRecord`, a *projection* for a model shape on a
hardware profile where nothing runs: a `Plan` is the outcome of measuring candidate settings on
this machine (tune.py). Its rows keep measured and projected tokens/s in separate fields (a
candidate may have either, both or neither), so no table or plot ever mixes them in one column.

`plan.save(path)` writes JSON with a format tag and version; `Plan.load(path)` refuses anything
else with a FiddlerError. `fnb.load(path, plan=plan_or_path)` starts from the plan's settings
(explicit keyword arguments win); `plan.apply(engine)` re-places a loaded engine.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import FileFormatError, OptionError, one_line
from ..policies.execution import make_execution
from ..files import read_json, write_json
from ..policies.placement import make_placement
from ..validate import check_int
from .workload import Workload

PLAN_FORMAT = "fiddler_nb.plan"
PLAN_VERSION = 1
MEASURED_STATUS = "measured"
TIME_LIMIT_STATUS = "not measured: time limit"


@dataclass(frozen=True)
class PlanSettings:
    """One candidate configuration (what `fnb.load` / `Engine.reconfigure` take)."""

    expert_budget: int
    placement: str
    execution: str
    threads: int  # torch CPU threads while generating
    expert_dtype: str | None = None  # a compressed expert format; None: the checkpoint's own

    def __post_init__(self) -> None:
        check_int("plan expert_budget", self.expert_budget, minimum=0)
        make_placement(self.placement), make_execution(self.execution)  # known names only
        check_int("plan threads", self.threads, minimum=1)
        if self.expert_dtype is not None and not isinstance(self.expert_dtype, str):
            raise OptionError(f"plan expert_dtype must be a format name or None, got "
                              f"{self.expert_dtype!r}")

    @property
    def label(self) -> str:
        fmt = f", {self.expert_dtype}" if self.expert_dtype else ""
        return (f"budget {self.expert_budget}, {self.placement}+{self.execution}, "
                f"{self.threads} thr{fmt}")

    def load_kwargs(self) -> dict[str, Any]:
        kwargs = dict(expert_budget=self.expert_budget, placement=self.placement,
                      execution=self.execution, threads=self.threads)
        if self.expert_dtype is not None:
            kwargs["expert_dtype"] = self.expert_dtype
        return kwargs


@dataclass(frozen=True)
class PlanRow:
    """One candidate: its projection (if any) and its measurement (if it ran)."""

    settings: PlanSettings
    status: str  # MEASURED_STATUS, TIME_LIMIT_STATUS or "failed: <message>"
    measured_prefill_tps: float | None = None
    measured_decode_tps: float | None = None
    measured_workload_s: float | None = None  # the workload's time at the measured speeds
    projected_prefill_tps: float | None = None  # planner; None where nothing was projected
    projected_decode_tps: float | None = None
    measured_workload_s_low: float | None = None  # interquartile range of the runs' seconds
    measured_workload_s_high: float | None = None
    samples: int = 0  # measured runs behind the medians

    @property
    def measured(self) -> bool:
        return self.status == MEASURED_STATUS


@dataclass(frozen=True)
class Plan:
    """The chosen settings for `workload` on `machine`, with every candidate's row."""

    model: str  # checkpoint path (or in-memory name)
    settings: PlanSettings
    workload: Workload
    rows: tuple[PlanRow, ...]
    machine: str
    device: str
    dtype: str
    reason: str
    measured_prompt_tokens: int  # what each measured point ran
    measured_new_tokens: int
    seconds_limit: float
    seconds_used: float
    projection_source: str = "none"  # what the projected columns come from
    notes: tuple[str, ...] = ()
    created: str = ""
    command: str = ""  # how it was produced (CLI line or Python call)

    # ---- using it ----------------------------------------------------------------------
    def load_kwargs(self) -> dict[str, Any]:
        return {**self.settings.load_kwargs(), "workload": self.workload}

    def apply(self, engine: Any) -> None:
        """Re-place a loaded engine with the plan's settings (no reload; format must match)."""
        s = self.settings
        current = getattr(engine, "expert_dtype", None)
        wanted = s.expert_dtype
        if wanted is not None:  # compare labels: 'int4' means the default group ('int4-g64')
            from ..formats.quant import resolve_format

            wanted = resolve_format(wanted, None).label()
        if wanted is not None and wanted != current:
            raise FileFormatError(f"the plan uses expert format {s.expert_dtype!r} but the engine "
                                  f"holds {current!r}; load it with fnb.load(path, plan=plan)")
        before, workload = engine.config, engine.workload
        try:
            use_workload(engine, self.workload)
            engine.reconfigure(expert_budget=s.expert_budget, placement=s.placement,
                               execution=s.execution, threads=s.threads)
        except BaseException:  # put back what was there: nothing half-applied
            engine.set_expert_budget(0)  # always fits, whatever the reserve
            engine.set_workload(workload)
            engine.reconfigure(expert_budget=before.expert_budget, placement=before.placement,
                               execution=before.execution)
            engine.set_threads(before.threads)
            raise

    def table(self) -> str:
        """Fixed-width table; measured and projected tokens/s in separate, labelled columns."""
        w = self.workload
        head = [f"autotune plan for {self.model} on {self.machine} ({self.device}, {self.dtype})",
                f"workload: batch {w.batch} x (prompt {w.prompt_tokens} + {w.new_tokens} new); "
                f"each measured run: prompt {self.measured_prompt_tokens} + "
                f"{self.measured_new_tokens} new tokens after an untimed warm-up generation; "
                "medians over the runs, workload seconds with their interquartile range",
                f"projected columns: {self.projection_source}",
                f"time: {self.seconds_used:.1f} s of {self.seconds_limit:g} s; chosen: "
                f"{self.settings.label}", f"reason: {self.reason}"]
        head += [f"command: {self.command}"] if self.command else []
        head += [f"note: {n}" for n in self.notes]
        cols = (f"  {'candidate':<44}{'meas. prefill':>14}{'meas. decode':>13}"
                f"{'meas. workload s (IQR)':>25}{'runs':>5}{'proj. prefill':>14}"
                f"{'proj. decode':>13}  status")
        rows = []
        for r in self.rows:
            mark = "*" if r.settings == self.settings else " "
            secs = _f(r.measured_workload_s, 3)
            if r.measured_workload_s_low is not None and r.samples > 1:
                secs += f" ({r.measured_workload_s_low:.3f}-{r.measured_workload_s_high:.3f})"
            rows.append(f"{mark} {r.settings.label:<44}{_f(r.measured_prefill_tps):>14}"
                        f"{_f(r.measured_decode_tps):>13}{secs:>25}{r.samples or '-':>5}"
                        f"{_f(r.projected_prefill_tps):>14}{_f(r.projected_decode_tps):>13}  "
                        f"{r.status}")
        return "\n".join(head + ["tokens/s (tok/s); * = chosen", cols] + rows)

    # ---- persistence -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, **asdict(self)}

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, source: str = "plan") -> "Plan":
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise FileFormatError(f"{source} is not a fiddler_nb plan (format {found!r}, expected "
                                  f"{PLAN_FORMAT!r}); make one with fnb.autotune(...).save(path)")
        if data.get("version") != PLAN_VERSION:
            raise FileFormatError(f"{source} is plan version {data.get('version')!r}; this fiddler_nb "
                                  f"reads version {PLAN_VERSION}; re-run fnb.autotune to make a new one")
        body = {k: v for k, v in data.items() if k not in ("format", "version")}
        try:
            body["settings"] = PlanSettings(**body["settings"])
            body["workload"] = Workload(**body["workload"])
            body["rows"] = tuple(PlanRow(**{**r, "settings": PlanSettings(**r["settings"])})
                                 for r in body["rows"])
            body["notes"] = tuple(body.get("notes", ()))
            return cls(**body)
        except FileFormatError:
            raise
        except (KeyError, TypeError, ValueError) as err:  # OptionError from a field included
            raise FileFormatError(f"{source} is a damaged plan file ({type(err).__name__}: "
                                  f"{one_line(err)}); "
                                  "re-run fnb.autotune and save it again") from None

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        data = read_json(path, "plan file", "make one with fnb.autotune(...).save(path) or "
                         "`fiddler-nb autotune --out`")
        return cls.from_dict(data, str(path))


def use_workload(engine: Any, workload: Workload) -> None:
    """`engine.set_workload(workload)`; if the current budget leaves too little room for it,
    empty the fast device first (the caller re-places right after)."""
    from ..errors import BudgetError

    try:
        engine.set_workload(workload)
    except BudgetError:
        engine.set_expert_budget(0)
        engine.set_workload(workload)


def as_plan(plan: "Plan | str | Path") -> Plan:
    if isinstance(plan, Plan):
        return plan
    if not isinstance(plan, (str, Path)) or not str(plan):
        raise OptionError(f"plan must be a fnb.Plan or the path of a saved one, got "
                          f"{type(plan).__name__}")
    return Plan.load(plan)


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"

