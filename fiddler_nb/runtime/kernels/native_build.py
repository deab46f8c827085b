"""Build and load the package's own CPU kernels (csrc/*.c) with the machine's C compiler.

At first use the sources are compiled into the package cache folder (FIDDLER_NB_CACHE, default
~/.cache/fiddler_nb) under `kernels-<hash>/`, the hash covering the sources, the compiler and its
flags, so a changed source or compiler builds again and an unchanged one loads in milliseconds.
fnb_pool.c (entry points, dispatch, thread pool) and fnb_layer.c (a whole layer's CPU experts in
one call) get baseline flags only; fnb_isa.c is compiled
once per SIMD variant with that ISA's flags, and the pool picks one at run time from the CPU's
features (`__builtin_cpu_supports`), never from the build machine. A variant the compiler cannot
build is left out (its weak symbol stays NULL); no compiler at all -> `NativeLibrary.error` says
why and the engine runs on torch's kernels. Nothing here needs the network.

Settings: FIDDLER_NB_CC (the compiler; default `cc`, then `gcc`, `clang`), FIDDLER_NB_NATIVE=0
(never use the native kernels), FIDDLER_NB_KERNELS_CACHE (where builds go; tests share one
folder across runs so they build once), FIDDLER_NB_ISA (force a variant: ref / generic / avx2 /
avx512 / avx512vnni, for tests and benchmarks), FIDDLER_NB_AMX=0 (never the AMX tile kernel, which
the avx512vnni variant carries where the compiler knows AMX and runs where the CPU has it).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SOURCES = Path(__file__).with_name("csrc")
BASE_FLAGS = ("-O2", "-fPIC", "-std=gnu11", "-Wno-psabi")
X86_VARIANTS = {  # variant -> its flags (fnb_isa.c compiled once each)
    "avx2": ("-DFNB_USE_AVX2", "-mavx2", "-mfma", "-mf16c"),
    "avx512": ("-DFNB_USE_AVX512", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma",
               "-mf16c"),
    "avx512vnni": ("-DFNB_USE_AVX512", "-DFNB_USE_VNNI", "-DFNB_USE_BF16DOT", "-mavx512f",
                   "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavx512bf16", "-mavx2", "-mfma",
                   "-mf16c"),
}
ISA_NAMES = ("ref", "generic", "avx2", "avx512", "avx512vnni")  # fnb_kernels.h FNB_ISA_* order
COMPILE_TIMEOUT_S = 300  # a busy 2-core box builds the variants in well under a minute


@dataclass(frozen=True)
class NativeLibrary:
    """The loaded kernels (lib) or why there are none (error)."""

    lib: ctypes.CDLL | None
    error: str = ""
    path: str = ""

    def isa_supported(self, isa: str) -> bool:
        return self.lib is not None and bool(self.lib.fnb_isa_supported(ISA_NAMES.index(isa)))

    def best_isa(self) -> str:
        return ISA_NAMES[self.lib.fnb_best_isa()] if self.lib is not None else "none"


def cache_root() -> Path:
    """FIDDLER_NB_KERNELS_CACHE, else the package cache folder (FIDDLER_NB_CACHE or
    ~/.cache/fiddler_nb): builds are keyed by a hash, so folders can be shared."""
    if os.environ.get("FIDDLER_NB_KERNELS_CACHE"):
        return Path(os.environ["FIDDLER_NB_KERNELS_CACHE"])
    return Path(os.environ.get("FIDDLER_NB_CACHE", Path.home() / ".cache" / "fiddler_nb"))


def find_compiler() -> tuple[str | None, str]:
    """(path of the C compiler, "" ) or (None, why not)."""
    return _find_compiler(os.environ.get("FIDDLER_NB_CC"), os.environ.get("PATH", ""))


@lru_cache(maxsize=16)  # looked up on every kernel call: cache per (setting, PATH)
def _find_compiler(asked: str | None, path: str) -> tuple[str | None, str]:
    if asked:
        found = shutil.which(asked, path=path or None)
        return (found, "") if found else (None, f"FIDDLER_NB_CC={asked!r} is not an executable")
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name, path=path or None)
        if found:
            return found, ""
    return None, "no C compiler found (cc / gcc / clang; set FIDDLER_NB_CC)"


def native_disabled() -> bool:
    return os.environ.get("FIDDLER_NB_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def load_library() -> NativeLibrary:
    """The native kernels for the current settings (built once per compiler and source hash)."""
    if native_disabled():
        return NativeLibrary(None, "native kernels switched off (FIDDLER_NB_NATIVE=0)")
    compiler, why = find_compiler()
    if compiler is None:
        return NativeLibrary(None, why)
    return _load(compiler, str(cache_root()))


@lru_cache(maxsize=None)
def _load(compiler: str, cache: str) -> NativeLibrary:
    variants = X86_VARIANTS if platform.machine().lower() in ("x86_64", "amd64") else {}
    digest = _digest(compiler, variants)
    out_dir = Path(cache) / f"kernels-{digest}"
    so = out_dir / "libfnb_kernels.so"
    if not so.is_file():
        try:
            _build(compiler, variants, out_dir)
        except (OSError, subprocess.SubprocessError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return NativeLibrary(None, f"building the native kernels with {compiler} failed: "
                                       f"{first[:200]}")
    try:
        lib = ctypes.CDLL(str(so))
    except OSError as err:
        return NativeLibrary(None, f"loading {so} failed: {err}")
    _declare(lib)
    return NativeLibrary(lib, "", str(so))


def _digest(compiler: str, variants: dict) -> str:
    h = hashlib.sha256()
    for src in sorted(SOURCES.glob("*.[ch]")):
        h.update(src.name.encode() + src.read_bytes())
    h.update(repr((compiler, _compiler_version(compiler), BASE_FLAGS, variants,
                   platform.machine())).encode())
    return h.hexdigest()[:16]


def _compiler_version(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True,
                              timeout=30).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def _build(compiler: str, variants: dict, out_dir: Path) -> None:
    """Compile into a temporary folder next to out_dir, then rename (a racing process that
    finished first wins; ours is dropped)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp", dir=out_dir.parent))
    try:
        jobs = [("pool", SOURCES / "fnb_pool.c", ()), ("layer", SOURCES / "fnb_layer.c", ())] + \
            [("generic", SOURCES / "fnb_isa.c", ("-DFNB_VARIANT=generic",))] + \
            [(v, SOURCES / "fnb_isa.c", (f"-DFNB_VARIANT={v}",) + f) for v, f in variants.items()]
        with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
            results = list(pool.map(lambda job: _compile(compiler, tmp, *job), jobs))
        objects = [obj for obj in results if obj is not None]
        if None in results[:3]:  # the pool, the layer call and the portable path must build
            raise RuntimeError(_last_error(tmp))
        so = tmp / "libfnb_kernels.so"
        _run([compiler, "-shared", "-o", str(so), *map(str, objects), "-lpthread", "-lm"])
        try:
            tmp.replace(out_dir)
        except OSError:
            if not (out_dir / so.name).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _compile(compiler: str, tmp: Path, name: str, src: Path, flags: tuple) -> Path | None:
    obj = tmp / f"{name}.o"
    try:
        _run([compiler, *BASE_FLAGS, *flags, "-I", str(SOURCES), "-c", str(src), "-o", str(obj)])
    except (OSError, subprocess.SubprocessError, RuntimeError) as err:
        (tmp / f"{name}.err").write_text(str(err))
        return None
    return obj


def _last_error(tmp: Path) -> str:
    errs = sorted(tmp.glob("*.err"))
    return errs[0].read_text() if errs else "compile failed"


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError((done.stderr or done.stdout or f"exit {done.returncode}").strip())


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.fnb_isa_supported.argtypes, lib.fnb_isa_supported.restype = [c_int], c_int
    lib.fnb_best_isa.argtypes, lib.fnb_best_isa.restype = [], c_int
    lib.fnb_linear.argtypes = [c_int, c_int, c_int, ptr, ptr, c_int, i64, i64, i64, ptr, c_int,
                               i64, c_int, ptr, c_int, i64]
    lib.fnb_linear.restype = c_int
    lib.fnb_linear_q8.argtypes, lib.fnb_linear_q8.restype = lib.fnb_linear.argtypes, c_int
    lib.fnb_linear_tile.argtypes = [*lib.fnb_linear.argtypes, c_int]
    lib.fnb_linear_tile.restype = c_int
    lib.fnb_bf16_dot.argtypes, lib.fnb_bf16_dot.restype = [c_int, c_int, c_int], c_int
    lib.fnb_q8_supported.argtypes, lib.fnb_q8_supported.restype = [c_int, i64], c_int
    lib.fnb_dequantize.argtypes = [c_int, c_int, c_int, ptr, ptr, c_int, i64, i64, i64, ptr,
                                   c_int]
    lib.fnb_dequantize.restype = c_int
    pp = ctypes.POINTER(ctypes.c_void_p)
    lib.fnb_moe_experts.argtypes = [c_int, c_int, c_int, c_int, i64, c_int, pp, pp, pp, pp,
                                    ctypes.POINTER(i64), i64, i64, ptr, c_int, i64, ptr, ptr,
                                    c_int, i64, c_int, c_int, c_int]
    lib.fnb_moe_experts.restype = c_int
