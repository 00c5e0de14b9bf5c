"""Keep OpenBLAS single-threaded while fitting, and say which CPU kernels it runs.

L-BFGS-B calls BLAS on vectors of a few numbers; with OpenBLAS's thread pool on a busy 2-core machine
each call waits for idle threads to wake, which measured 25x slower (4 ms instead of 0.17 ms per
iteration). The pool size can only be set through the library itself, so we find the OpenBLAS copies
numpy and scipy loaded (/proc/self/maps) and call their `*_set_num_threads`; elsewhere this is a no-op.

OpenBLAS also picks its kernels by CPU at load time (`OPENBLAS_CORETYPE` overrides): two AMD EPYCs with
AVX-512 measured here ran SkylakeX and Haswell kernels. A fit's last digits move with them, and so does the
whole optimum where the data leave it flat, so fit.json records `kernels()`.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Iterator
from contextlib import contextmanager

_PREFIXES = ("scipy_openblas", "openblas")
_SUFFIXES = ("", "64_", "_")


@functools.lru_cache(maxsize=1)
def _openblas_libs() -> tuple[ctypes.CDLL, ...]:
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower() and "/" in line}
    except OSError:
        return ()
    libs = []
    for path in sorted(paths):
        try:
            libs.append(ctypes.CDLL(path))
        except OSError:
            continue
    return tuple(libs)


def _function(lib: ctypes.CDLL, verb: str, noun: str = "num_threads") -> ctypes._CFuncPtr | None:
    for prefix in _PREFIXES:
        for suffix in _SUFFIXES:
            fn = getattr(lib, f"{prefix}_{verb}_{noun}{suffix}", None)
            if fn is not None:
                return fn
    return None


def kernels() -> list[str]:
    """The kernels each loaded OpenBLAS copy chose for this CPU ('Haswell', 'SkylakeX', ...), sorted;
    empty where numpy and scipy use another BLAS."""
    names = set()
    for lib in _openblas_libs():
        corename = _function(lib, "get", "corename")
        if corename is not None:
            corename.restype = ctypes.c_char_p
            names.add((corename() or b"?").decode(errors="replace").strip())
    return sorted(names)


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Within the block every loaded OpenBLAS runs on one thread; the old counts are restored after."""
    restore = []
    for lib in _openblas_libs():
        get, put = _function(lib, "get"), _function(lib, "set")
        if get is None or put is None:
            continue
        get.restype = ctypes.c_int
        put.argtypes = [ctypes.c_int]
        restore.append((put, int(get())))
        put(1)
    try:
        yield
    finally:
        for put, count in restore:
            put(count)
