"""MLX's runtime set up before mlx loads: an optimized BLAS on Linux (nothing elsewhere).

Why this exists. The `mlx[cpu]` Linux wheel leaves `cblas_sgemm` and the rest of CBLAS
undefined in `libmlx.so` and bundles the Netlib reference BLAS to satisfy them; the dynamic
linker binds each undefined symbol to the first library in the global scope that exports it,
and only then to libmlx's own dependencies. So a BLAS loaded with RTLD_GLOBAL *before*
`mlx.core` loads is the one MLX multiplies with: Intel MKL's `libmkl_rt` (the `mkl` wheel, a
Linux x86-64 dependency of sa3ckpt) exports the standard CBLAS names and is 20-50x faster
than the reference BLAS here. OpenBLAS wheels on PyPI either prefix their names
(`scipy_cblas_sgemm` in scipy-openblas32/64, which MLX cannot bind to) or need the system's
libgfortran.so.5 (cmeel-openblas, ngsolve-openblas), so they are no install-time answer.

One place: `sa3ckpt/__init__.py` calls `install()`, which puts a finder on `sys.meta_path`
that runs `prepare()` when anything first imports `mlx` (sa3ckpt's modules, the TUI, tests,
benchmarks, a user's script that imported sa3ckpt first). Nothing is loaded for commands
that never touch MLX. `SA3CKPT_BLAS` chooses: unset or `auto` (MKL when installed), `off`
(MLX's bundled reference BLAS), or a path to a CBLAS library (e.g. Debian's
`libopenblas.so.0`). macOS is left alone (MLX uses Accelerate and Metal there).

Thread count: the user's MKL_NUM_THREADS, OMP_NUM_THREADS or OPENBLAS_NUM_THREADS (the
first one set, in the loaded library's own order of precedence), else this process's cores.
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are OpenBLAS's to read: a preloaded OpenBLAS honours
them as the user set them, and the diagnostic names the kernel it chose.

Exit safety. MLX keeps its compile cache (`mx.compile`, used by mlx.nn's activations) per
thread, and the cache holds Python functions. A worker thread that ran a compiled function
destroys that cache in its C++ thread-local destructors *after* Python's `join()` returned;
if the main thread has begun finalizing by then, taking the GIL ends the thread with
`pthread_exit` inside a noexcept destructor, and the process aborts with "terminate called
without an active exception". That is not Linux's: the destructors run the same way on
macOS. sa3ckpt's models call no compiled function (`models.layers.silu`), so its work in any
thread leaves no Python objects in such a cache; compilation itself is left on, for the
caller's own code (a process that compiles in worker threads is exposed as with MLX alone).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.abc
import os
import sys
import sysconfig
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "SA3CKPT_BLAS"
OFF = ("off", "reference", "0", "none")


@dataclass(frozen=True)
class Kind:
    """A CBLAS library family: how to recognise it, set its threads and read its version."""

    name: str
    marker: str  # a symbol only this family exports
    set_threads: str  # void f(int), the process-wide setting
    thread_vars: tuple[str, ...]  # environment variables it reads, strongest first


KINDS = (
    Kind("Intel MKL", "mkl_get_version_string", "MKL_Set_Num_Threads",
         ("MKL_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")),
    Kind("OpenBLAS", "openblas_get_config", "openblas_set_num_threads",
         ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")),
    Kind("BLIS", "bli_info_get_version_str", "bli_thread_set_num_threads",
         ("BLIS_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")),
)  # fmt: skip


@dataclass(frozen=True)
class Preload:
    """What `prepare()` did: the library loaded into the global scope (or why none)."""

    path: str | None
    reason: str  # "SA3CKPT_BLAS=off", "not Linux", "mkl not installed", an OSError's text...
    threads: int | None = None
    threads_from: str | None = None
    before_mlx: bool = True  # False: mlx.core was already loaded, MLX kept its own BLAS


_lock = threading.Lock()
_preload: Preload | None = None
_loaded: tuple[ctypes.CDLL, Kind, int] | None = None  # what prepare() loaded, its threads now


def _mkl_rt() -> str | None:
    """libmkl_rt.so.N of the `mkl` wheel: in the install scheme's data lib/ (venv, system,
    --user), else wherever its RECORD says; the highest soname version wins."""
    dirs = [Path(sysconfig.get_paths()["data"]) / "lib"]
    with contextlib.suppress(KeyError):
        dirs.append(Path(sysconfig.get_paths(scheme=f"{os.name}_user")["data"]) / "lib")
    found = [p for d in dirs for p in glob.glob(str(d / "libmkl_rt.so.*"))]
    if not found:
        from importlib.metadata import PackageNotFoundError, files

        try:
            records = files("mkl") or []
        except PackageNotFoundError:
            records = []
        found = [str(f.locate()) for f in records if f.name.startswith("libmkl_rt.so.")]
    found = [p for p in found if os.path.isfile(p)]
    return max(found, key=lambda p: (len(p.rsplit(".so.", 1)[-1]), p)) if found else None


def _kind(lib: ctypes.CDLL) -> Kind | None:
    return next((k for k in KINDS if hasattr(lib, k.marker)), None)


def _thread_count(kind: Kind | None) -> tuple[int, str]:
    """(threads, where the number came from): the first positive integer variable the
    library reads, else the cores of this process."""
    for var in kind.thread_vars if kind else ("OMP_NUM_THREADS",):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value), var
    from sa3ckpt.threads import cores

    return cores(), "the machine's cores"


def _load(path: str) -> Preload:
    global _loaded
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        return Preload(None, f"could not load {path}: {exc}")
    if not hasattr(lib, "cblas_sgemm"):
        return Preload(None, f"{path} exports no cblas_sgemm")
    kind = _kind(lib)
    threads, source = _thread_count(kind)
    if kind is not None:
        getattr(lib, kind.set_threads)(ctypes.c_int(threads))
        _loaded = (lib, kind, threads)
    return Preload(path, "loaded", threads, source)


def prepare() -> Preload:
    """Load the chosen BLAS into the global scope (once per process; thread-safe)."""
    global _preload
    with _lock:
        if _preload is not None:
            return _preload
        choice = os.environ.get(ENV, "auto").strip()
        if "mlx.core" in sys.modules:
            # Too late: libmlx's CBLAS symbols are bound (Python loads extensions RTLD_NOW).
            result = Preload(None, "mlx was imported before sa3ckpt, so it kept its BLAS", None,
                             None, False)  # fmt: skip
        elif not sys.platform.startswith("linux"):
            result = Preload(None, "not Linux (MLX uses Accelerate and Metal)")
        elif choice.lower() in OFF:
            result = Preload(None, f"{ENV}={choice}")
        elif choice.lower() not in ("", "auto"):
            result = _load(choice)
        else:
            path = _mkl_rt()
            result = _load(path) if path else Preload(None, "the mkl wheel is not installed")
        _preload = result
        return result


@contextlib.contextmanager
def mlx_blas_threads(threads: int) -> Iterator[None]:
    """BLAS threads per matrix product in MLX's own threads, for the duration.

    MLX multiplies in its stream threads, not in the thread that calls `mx.eval`, and MKL
    (like OpenMP) lets a thread-local limit override the process-wide one only in the thread
    that set it: `threadpoolctl`'s limit (MKL_Set_Num_Threads_Local) never reaches a stream
    thread, so two streams each ran two MKL threads on two cores, and each team's idle
    threads spun between calls. This sets the process-wide count of the library `prepare()`
    loaded, which every stream thread reads at its next call, and puts the previous one back.
    Process-wide: meant for one phase of a command that owns the process (verify's probe),
    not for concurrent callers. A no-op without a preloaded library (reference BLAS, macOS).
    """
    prepare()
    with _lock:
        loaded = _loaded
    if loaded is None:
        yield
        return
    lib, kind, before = loaded
    setter = getattr(lib, kind.set_threads)
    setter(ctypes.c_int(max(1, threads)))
    try:
        yield
    finally:
        setter(ctypes.c_int(before))


@contextlib.contextmanager
def reuse_mlx_buffers() -> Iterator[None]:
    """Keep the buffers MLX frees for reuse while the block runs; free them after it.

    On a CPU-only Linux build MLX keeps 32 MB of freed buffers, so nearly every allocation is
    fresh memory that the kernel hands over a page at a time (a zero-filled minor fault per
    4 KiB: 450,000 for the 1.8 GB of a real-size small DiT in float32, about a second of
    system time on two cores). A job that frees arrays and then allocates ones of the same
    sizes (verify: MERGED's model, then BASE's, then BASE's live and rounded weights) takes
    them from the cache instead. Peak memory does not grow with it: a freed buffer is kept
    instead of returned, and reused before any new one is made for a size it fits.
    """
    import mlx.core as mx

    before = mx.set_cache_limit(mx.get_memory_limit())
    try:
        yield
    finally:
        mx.set_cache_limit(before)
        mx.clear_cache()


class _BeforeMLX(importlib.abc.MetaPathFinder):
    """Runs `prepare()` the first time anything imports `mlx`, then steps aside."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == "mlx" or fullname.startswith("mlx."):
            uninstall()
            prepare()
        return None


_finder = _BeforeMLX()


def install() -> None:
    """Arrange for `prepare()` to run before mlx loads (now, if it already has)."""
    if "mlx.core" in sys.modules:
        prepare()
    elif _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)


class _DlInfo(ctypes.Structure):
    _fields_ = (
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    )


def _provider(symbol: str) -> str | None:
    """The file of the library that exports `symbol` in the global scope (None: none does)."""
    process = ctypes.CDLL(None)
    try:
        address = ctypes.cast(getattr(process, symbol), ctypes.c_void_p).value
    except AttributeError:
        return None
    info = _DlInfo()
    dladdr = process.dladdr
    dladdr.argtypes = (ctypes.c_void_p, ctypes.POINTER(_DlInfo))
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.path.realpath(os.fsdecode(info.dli_fname))


def _version(path: str) -> tuple[str, str]:
    """(family name, version and kernel text) of a loaded CBLAS library."""
    lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    kind = _kind(lib)
    if kind is None:
        return "CBLAS", ""
    if kind.name == "Intel MKL":
        buffer = ctypes.create_string_buffer(256)
        lib.mkl_get_version_string(buffer, ctypes.c_int(len(buffer)))
        text = buffer.value.decode(errors="replace")
        parts = text.replace("Intel(R) oneAPI Math Kernel Library Version", "").split()
        return kind.name, parts[0].split("-")[0] if parts else text
    if kind.name == "OpenBLAS":
        for fn in (lib.openblas_get_config, lib.openblas_get_corename):
            fn.restype = ctypes.c_char_p
        config = lib.openblas_get_config().decode(errors="replace").split()
        core = lib.openblas_get_corename().decode(errors="replace")
        version = config[1] if len(config) > 1 else ""
        coretype = os.environ.get("OPENBLAS_CORETYPE")
        forced = f", forced by OPENBLAS_CORETYPE={coretype}" if coretype else ""
        return kind.name, f"{version} (kernel {core}{forced})".strip()
    return kind.name, ""


@dataclass(frozen=True)
class Blas:
    """The BLAS MLX multiplies with in this process, for diagnostics."""

    name: str  # "Intel MKL", "OpenBLAS", "reference BLAS (Netlib, bundled with mlx)", ...
    version: str
    path: str | None
    threads: int | None
    threads_from: str | None
    optimized: bool
    note: str  # why this one (the off switch, a load failure, mlx imported first...)

    def line(self) -> str:
        """One line for `--version` and reports."""
        text = f"MLX BLAS: {self.name}"
        if self.version:
            text += f" {self.version}"
        if self.path:
            text += f" ({Path(self.path).name})"
        if not self.optimized:
            text += ", single-threaded"
        elif self.threads:
            text += f", {self.threads} thread{'s' * (self.threads != 1)} ({self.threads_from})"
        if self.note:
            text += f"; {self.note}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line(),
            "name": self.name,
            "version": self.version,
            "path": self.path,
            "threads": self.threads,
            "threads_from": self.threads_from,
            "optimized": self.optimized,
            "note": self.note,
        }


REFERENCE = "reference BLAS (Netlib, bundled with mlx)"


def active() -> Blas:
    """The BLAS that `mlx.core` binds `cblas_sgemm` to (prepares first when needed).

    Linux: the library exporting `cblas_sgemm` in the global scope when mlx loaded, else the
    reference BLAS in the wheel. Elsewhere: MLX's own (Accelerate on macOS)."""
    found = prepare()
    if not sys.platform.startswith("linux"):
        return Blas("Accelerate (MLX's own)", "", None, None, None, True, found.reason)
    # The global scope is searched before libmlx's own libraries: what exports the symbol
    # there now is what mlx bound (ours, or one the user put there with LD_PRELOAD).
    provider = _provider("cblas_sgemm")
    if provider is None:
        return Blas(REFERENCE, "", None, None, None, False, found.reason)
    name, version = _version(provider)
    note = f"{ENV}=off for the reference BLAS" if found.path else found.reason
    return Blas(name, version, provider, found.threads, found.threads_from, True, note)


__all__ = [
    "ENV",
    "KINDS",
    "REFERENCE",
    "Blas",
    "Preload",
    "active",
    "install",
    "mlx_blas_threads",
    "prepare",
    "reuse_mlx_buffers",
    "uninstall",
]
