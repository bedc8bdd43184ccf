"""Great Expectations, imported without loading SciPy's statistics until something uses them.

Importing GX 1.x costs ~4.3 CPU-s on this project's 2-core reference machine, ~1.8 of them in
`scipy.stats`: one of GX's core expectation modules (KL divergence) imports it at its top, and GX imports
every core expectation when it starts. No check of this project uses a statistical expectation, and every
process that validates (a worker of the tests, the warm run worker, `stripe-sage run` and `demo`) paid it.

Importing this module registers `scipy.stats` as a lazy module first (`importlib.util.LazyLoader`, from
the standard library): the name is bound, and the module is executed in full at its first attribute
access, so an expectation that does need SciPy still gets it. Everything else is GX as installed.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

DEFERRED = ("scipy.stats",)


def defer_until_used(name: str) -> ModuleType | None:
    """Register `name` (a submodule) as a lazy module unless it is imported already; None if not installed.

    Its parent package is imported (cheap for SciPy) and gets the attribute, so `from parent import child`
    binds the lazy module without going through the import system (which would load it at once).
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return None
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


for _name in DEFERRED:
    defer_until_used(_name)

import great_expectations as gx  # noqa: E402  (after the deferral, which is the point)
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402

__all__ = ["ProgressBarsConfig", "defer_until_used", "gx"]
