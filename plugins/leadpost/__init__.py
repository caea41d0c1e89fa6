"""leadpost: push marketing leads from a database to any HTTP endpoint with Apache Airflow.

Importing the package is cheap: public names load on first use, so the dag-processor and the CLI
pay only for what they touch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "ActionConfig": "leadpost.config",
    "ActionGateSensor": "leadpost.sensors",
    "ActionRef": "leadpost.config",
    "ActionStatus": "leadpost.states",
    "ConfigError": "leadpost.exceptions",
    "HttpPostOperator": "leadpost.operators",
    "LeadPostHook": "leadpost.hook",
    "LeadpostError": "leadpost.exceptions",
    "build_dags": "leadpost.dag_factory",
    "load_triggers": "leadpost.config",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'leadpost' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
