"""Package attributes imported on first use (PEP 562), so that importing one light module
of a package does not load its heavy siblings.

A package whose `__init__` re-exports names from modules that load gRPC (the clients, the
broker's interceptor) would otherwise drag gRPC into every import of its gRPC-free
modules: `import logstore.client.producer.accumulator` runs
`logstore/client/producer/__init__.py` first.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package`: `exports` maps each public name to the
    module that defines it; the module is imported when the name is first asked for, and
    the value is then cached in the package so later lookups are plain attribute reads."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
