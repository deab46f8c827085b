"""One measurement discipline for every timed number fiddler_nb shows.

`repeat(run, policy)`: warm-up runs are discarded; then `run` repeats until the samples' spread
is small (relative IQR <= `policy.rel_spread`, after `min_repeats`), or the time budget or
`max_repeats` runs out. The result carries every run and a `Spread`: the median, the interval
(first to third quartile), the number of repeats and why it stopped. Tables print it as
`12.3 (11.9-12.8, 7 runs)`; plots draw the interval as error bars. `time_ms(fn, policy)` is the
same for one call timed on the clock.

`conditions()` reads how busy the machine is before and after a measurement: the 1-minute load
average and, where /proc/stat exists, the share of CPU time other processes took during a short
sleep (we sleep, so whatever ran was someone else). `Conditions.note(spreads)` is the one line
shown next to the numbers when the machine was busy.

Clocks, sleeps and the /proc and load-average readers are injected, so tests run on a fake
clock with injected noise.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Sequence, TypeVar

from ..runtime.errors import OptionError

T = TypeVar("T")
STEADY, BUDGET, MAX_REPEATS = "steady", "time budget", "max repeats"
MIN_SAMPLE_S = 2e-3  # time_ms repeats a short call inside one sample until it lasts this long
IDLE_PROBE_S = 0.2  # long enough for /proc/stat's 10 ms ticks to count ~40 per CPU
# Other processes taking a quarter of the CPUs slow a memory-bound kernel on every core by about
# as much; below that, the repeats' spread already says what the noise is.
BUSY_SHARE = 0.25
BUSY_LOAD_PER_CPU = 1.0  # without /proc/stat: more runnable threads than CPUs (ours included)
SLOW_FACTOR_SHOWN = 2.0  # a load of 2+ runnable threads per CPU: say the numbers read slow


@dataclass(frozen=True)
class RepeatPolicy:
    """When to stop repeating: steady, out of time, or out of repeats."""

    warmup: int = 1  # discarded runs (first calls pay lazy initialisation, allocators, caches)
    min_repeats: int = 3  # fewer cannot give an interval
    max_repeats: int = 15
    rel_spread: float = 0.05  # steady: IQR within 5% of the median
    budget_s: float = 2.0  # after min_repeats, stop once this much time was spent

    def __post_init__(self) -> None:
        for name in ("warmup", "min_repeats", "max_repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise OptionError(f"RepeatPolicy.{name} must be an integer >= 0, got {value!r}")
        if not 1 <= self.min_repeats <= self.max_repeats:
            raise OptionError(f"RepeatPolicy needs 1 <= min_repeats <= max_repeats, got "
                              f"{self.min_repeats} and {self.max_repeats}")
        if not (self.rel_spread >= 0 and self.budget_s >= 0):
            raise OptionError("RepeatPolicy.rel_spread and budget_s must be >= 0")

    @classmethod
    def fixed(cls, repeats: int, warmup: int = 1) -> "RepeatPolicy":
        """Exactly `repeats` runs (a caller that asked for a count)."""
        return cls(warmup, repeats, repeats, 0.0, math.inf)

    def at_least(self, repeats: int) -> "RepeatPolicy":
        """This policy, with `repeats` as its floor (and the ceiling raised to match)."""
        return RepeatPolicy(self.warmup, repeats, max(repeats, self.max_repeats),
                            self.rel_spread, self.budget_s)


QUICK = RepeatPolicy(warmup=1, min_repeats=3, max_repeats=9, budget_s=1.0)
DEFAULT = RepeatPolicy()
THOROUGH = RepeatPolicy(warmup=2, min_repeats=5, max_repeats=30, rel_spread=0.03, budget_s=10.0)


@dataclass(frozen=True)
class Spread:
    """A median and its interval (first to third quartile) over `repeats` samples."""

    median: float
    low: float
    high: float
    repeats: int
    unit: str = ""
    stopped: str = ""  # STEADY, BUDGET or MAX_REPEATS ("" for a summary of given values)

    @property
    def rel_spread(self) -> float:
        """IQR / median (inf for a median of 0)."""
        return (self.high - self.low) / self.median if self.median > 0 else math.inf

    def inverse(self, numerator: float, unit: str = "") -> "Spread":
        """numerator / value (ms per token -> tokens/s): the interval flips."""
        inv = [numerator / v if v > 0 else math.inf for v in (self.median, self.high, self.low)]
        return Spread(*inv, self.repeats, unit, self.stopped)

    def scaled(self, factor: float, unit: str = "") -> "Spread":
        return Spread(self.median * factor, self.low * factor, self.high * factor, self.repeats,
                      unit or self.unit, self.stopped)

    def text(self, digits: int = 3) -> str:
        """'12.3 ms (11.9-12.8, 7 runs)' with `digits` significant digits."""
        unit = f" {self.unit}" if self.unit else ""
        if self.repeats <= 1:
            return f"{self.median:.{digits}g}{unit} (1 run)"
        return (f"{self.median:.{digits}g}{unit} ({self.low:.{digits}g}-{self.high:.{digits}g}, "
                f"{self.repeats} runs)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Spread":
        return cls(**data)


def spread(values: Sequence[float], unit: str = "", stopped: str = "") -> Spread:
    """Median and quartiles of `values` (NaN dropped; one value gives a zero-width interval)."""
    vals = sorted(float(v) for v in values if v == v)
    if not vals:
        raise OptionError("spread needs at least one number")
    if len(vals) == 1:
        return Spread(vals[0], vals[0], vals[0], 1, unit, stopped)
    q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    return Spread(statistics.median(vals), q1, q3, len(vals), unit, stopped)


@dataclass(frozen=True)
class Repeated(Generic[T]):
    """Every timed run, the value read from each, and their spread."""

    runs: tuple[T, ...]
    values: tuple[float, ...]
    spread: Spread
    elapsed_s: float


def repeat(run: Callable[[], T], policy: RepeatPolicy = DEFAULT,
           value: Callable[[T], float] = float, unit: str = "",
           clock: Callable[[], float] = time.perf_counter) -> Repeated[T]:
    """Warm up, then repeat `run` until `value(run())` is steady or the policy says stop."""
    for _ in range(policy.warmup):
        run()
    start = clock()
    runs: list[T] = []
    values: list[float] = []
    while True:
        runs.append(run())
        values.append(float(value(runs[-1])))
        n = len(values)
        if n >= policy.max_repeats:
            stopped = MAX_REPEATS
            break
        if n >= policy.min_repeats and spread(values).rel_spread <= policy.rel_spread:
            stopped = STEADY
            break
        if n >= policy.min_repeats and clock() - start >= policy.budget_s:
            stopped = BUDGET
            break
    return Repeated(tuple(runs), tuple(values), spread(values, unit, stopped), clock() - start)


def time_ms(fn: Callable[[], Any], policy: RepeatPolicy = DEFAULT,
            sync: Callable[[], None] = lambda: None,
            clock: Callable[[], float] = time.perf_counter,
            min_sample_s: float = MIN_SAMPLE_S) -> Spread:
    """Wall milliseconds of one call of `fn`; a sample repeats a short call until it lasts
    `min_sample_s` (the clock's resolution is then no part of the number)."""
    for _ in range(policy.warmup):
        fn()
    sync()
    t0 = clock()
    fn()
    sync()
    inner = max(1, math.ceil(min_sample_s / max(clock() - t0, 1e-9)))

    def sample() -> float:
        sync()
        t0 = clock()
        for _ in range(inner):
            fn()
        sync()
        return (clock() - t0) / inner * 1e3

    steady = RepeatPolicy(0, policy.min_repeats, policy.max_repeats, policy.rel_spread,
                          policy.budget_s)
    return repeat(sample, steady, unit="ms", clock=clock).spread


# ---- how busy the machine is --------------------------------------------------------------
def read_cpu_times(path: str | Path = "/proc/stat") -> tuple[int, int] | None:
    """(idle ticks, total ticks) of all CPUs from /proc/stat's first line; None without it."""
    try:
        first = Path(path).read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not first or first[0] != "cpu" or len(first) < 5:
        return None
    ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    return ticks[3] + (ticks[4] if len(ticks) > 4 else 0), sum(ticks)


def _loadavg() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class MachineLoad:
    """One reading: load average, CPUs, and the share of CPU time others took (None: unknown)."""

    load_1m: float
    cpus: int
    others_share: float | None  # 0..1, measured while this process slept

    @property
    def busy(self) -> bool:
        if self.others_share is not None:
            return self.others_share > BUSY_SHARE
        return self.load_1m / max(self.cpus, 1) > BUSY_LOAD_PER_CPU

    def text(self) -> str:
        others = ("" if self.others_share is None
                  else f"others used {100 * self.others_share:.0f}% of the CPUs, ")
        return f"{others}load average {self.load_1m:.2f} on {self.cpus} CPUs"


def machine_load(probe_s: float = IDLE_PROBE_S,
                 cpu_times: Callable[[], tuple[int, int] | None] = read_cpu_times,
                 sleep: Callable[[float], None] = time.sleep,
                 loadavg: Callable[[], float] = _loadavg,
                 cpus: Callable[[], int] = _cpus) -> MachineLoad:
    """Read the machine's load now (sleeps `probe_s` to sample /proc/stat; 0 skips it)."""
    share = None
    first = cpu_times() if probe_s > 0 else None
    if first is not None:
        sleep(probe_s)
        second = cpu_times()
        if second is not None and second[1] > first[1]:
            idle = (second[0] - first[0]) / (second[1] - first[1])
            share = min(1.0, max(0.0, 1.0 - idle))
    return MachineLoad(float(loadavg()), int(cpus()), share)


@dataclass(frozen=True)
class Conditions:
    """The machine's load before and after a measurement."""

    before: MachineLoad
    after: MachineLoad | None = None

    @property
    def busy(self) -> bool:
        return self.before.busy or (self.after is not None and self.after.busy)

    def finished(self, after: MachineLoad) -> "Conditions":
        return Conditions(self.before, after)

    def note(self, spreads: Sequence[Spread] = ()) -> str | None:
        """One line when the machine was busy ('this machine was busy: ...'), else None."""
        if not self.busy:
            return None
        halves = sorted(s.rel_spread / 2 for s in spreads if math.isfinite(s.rel_spread))
        shares = [m.others_share for m in (self.before, self.after)
                  if m is not None and m.others_share is not None]
        if halves and halves[-1] > 0:
            typical, worst = statistics.median(halves), halves[-1]
            off = (f"about +-{100 * typical:.0f}% run to run (half the interquartile range of "
                   "the repeats")
            off += f"; up to +-{100 * worst:.0f}%)" if worst > 1.5 * typical else ")"
        elif shares:
            off = f"up to {100 * max(shares):.0f}% (the CPU time others took)"
        else:
            off = "more than their spread shows"
        loads = [m for m in (self.before, self.after) if m is not None]
        factor = max(m.load_1m / max(m.cpus, 1) for m in loads)
        if factor >= SLOW_FACTOR_SHOWN:  # our share of the CPUs: roughly cpus / load
            off += (f", and read slow against a quiet machine, perhaps by {factor:.0f}x or more "
                    "(the load average per CPU)")
        after = f"; after: {self.after.text()}" if self.after is not None else ""
        return (f"this machine was busy (before: {self.before.text()}{after}): numbers may be "
                f"off by {off}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Conditions":
        after = data.get("after")
        return cls(MachineLoad(**data["before"]), MachineLoad(**after) if after else None)


def conditions(probe_s: float = IDLE_PROBE_S, **readers: Any) -> Conditions:
    """Conditions with `before` read now; call `.finished(machine_load())` afterwards."""
    return Conditions(machine_load(probe_s, **readers))
