"""Benchmark models from the notebook: a load generator, live plots, result tables and config sweeps.

    run = nbserve.bench(server, "scorer", concurrency=[1, 4, 16])    # live plotly plots in a notebook
    run.results                                                       # one row per concurrency
    best = nbserve.sweep("scorer", max_batch_size=[8, 32], max_queue_delay_microseconds=[0, 500],
                         concurrency=[16], latency_budget_ms=5)
    best.apply()                                                      # the registered model takes it

``nbserve.bench`` is both this package and the function: calling the package calls
:func:`nbserve.bench.run.bench` (the import system binds the package to ``nbserve.bench`` as soon as
any of its modules is imported, so a plain function of that name could not survive).

Modules: :mod:`.run` (levels, windows, stability; ``BenchRun``), :mod:`.generator` and
:mod:`._engine` (the load loop in a thread or a child process), :mod:`._transports` (in-process,
HTTP, gRPC), :mod:`.inputs` (request data from the signature), :mod:`.measure` (percentiles,
server statistics), :mod:`.target` (which server, which protocol), :mod:`.live` (plotly
FigureWidget), :mod:`.results` (DataFrames, files, comparison plots), :mod:`.sweeps`,
:mod:`.table` (perf_analyzer-like text). Nothing heavy is imported until used.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = ["bench", "sweep", "BenchRun", "SweepResult", "LivePlot", "compare"]

_LAZY = {
    "bench": ("nbserve.bench.run", "bench"),
    "BenchRun": ("nbserve.bench.run", "BenchRun"),
    "sweep": ("nbserve.bench.sweeps", "sweep"),
    "SweepResult": ("nbserve.bench.sweeps", "SweepResult"),
    "LivePlot": ("nbserve.bench.live", "LivePlot"),
    "compare": ("nbserve.bench.results", "compare"),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'nbserve.bench' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _CallablePackage(types.ModuleType):
    """``nbserve.bench(...)`` runs a benchmark; ``nbserve.bench.<module>`` still reaches the modules."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.bench(*args, **kwargs)

    @property
    def __signature__(self) -> Any:  # so that help() and IDEs show bench()'s parameters
        import inspect

        return inspect.signature(self.bench)


sys.modules[__name__].__class__ = _CallablePackage
