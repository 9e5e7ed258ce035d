"""Compiled kernels of the converter: ``numba.njit`` with its on-disk cache where it can have one.

Conversion workers are forked from the parent, which compiles (or loads from the cache) every
kernel before it forks (``warm_up``), so the workers inherit the machine code instead of each
compiling it (about 1 s per kernel, all at once on a fresh install).
"""
from __future__ import annotations

import warnings

import numba


def njit(fn):
    """``numba.njit(cache=True)``, or without the on-disk cache where numba finds no directory for
    it (a read-only package and home, no NUMBA_CACHE_DIR): then each process compiles in memory,
    silently, once. No fastmath: results do not depend on the CPU's vector width."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", numba.NumbaWarning)
            return numba.njit(cache=True)(fn)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(cache=False)(fn)
