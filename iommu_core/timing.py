"""Timing for benches: the best of a few repetitions, with the cyclic GC paused while
each one runs (as ``timeit`` does), so ratios measured in one process are comparable.

:data:`clock` is ``time.perf_counter`` (timeit's); on a shared machine under load,
``iommu_core.timing.clock = time.process_time`` (this process's CPU time) keeps other
processes' bursts out of the figures."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

#: The clock every function here reads (looked up at each call).
clock: Callable[[], float] = time.perf_counter


_frozen = False


@contextmanager
def frozen_heap() -> Iterator[None]:
    """While a bench runs, its ``gc.collect()`` calls scan only what the bench made: the
    objects alive before it (a test suite's whole heap, when a test runs a bench) are
    moved to the permanent generation, and back afterwards."""
    global _frozen
    if _frozen:  # a bench inside a bench: the outer one froze the heap already
        yield
        return
    gc.collect()
    gc.freeze()
    _frozen = True
    try:
        yield
    finally:
        _frozen = False
        gc.unfreeze()


def best_per_call(fn: Callable[[], object], number: int = 1, reps: int = 7) -> float:
    """Seconds per call of ``fn``: ``number`` calls per repetition, best of ``reps``."""
    best = float("inf")
    for _ in range(reps):
        enabled = gc.isenabled()
        gc.disable()
        try:
            t0 = clock()
            for _ in range(number):
                fn()
            best = min(best, clock() - t0)
        finally:
            if enabled:
                gc.enable()
    return best / number


def best_interleaved(fns: Sequence[Callable[[], object]], number: int | Sequence[int] = 1,
                     reps: int = 7) -> list[float]:
    """Seconds per call of each of ``fns`` (``number`` calls a repetition, or one number
    each), their repetitions interleaved (A B A B ...) so that a change of machine load
    between them does not show as a ratio."""
    numbers = [number] * len(fns) if isinstance(number, int) else list(number)
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], best_per_call(fn, numbers[i], 1))
    return best


def best_of_runs(runs: Sequence[Callable[[int], int]], reps: int = 7) -> list[float]:
    """Seconds per item of each of ``runs``: ``run(rep)`` does one repetition over fresh
    items and returns how many it did (cold-cache measurements cannot repeat the same
    items); the runs' repetitions are interleaved, as in :func:`best_interleaved`."""
    best = [float("inf")] * len(runs)
    for rep in range(reps):
        for i, run in enumerate(runs):
            enabled = gc.isenabled()
            gc.disable()
            try:
                t0 = clock()
                n = run(rep)
                best[i] = min(best[i], (clock() - t0) / max(1, n))
            finally:
                if enabled:
                    gc.enable()
    return best
