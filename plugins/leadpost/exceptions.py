"""The leadpost exception tree.

::

    LeadpostError
    ├── ConfigError(ValueError)      triggers file / action configuration is invalid (holds ``problems``)
    ├── ImportRowError(ValueError)   one row of a lead import file is invalid (``line``, ``reason``)
    ├── UnsafeTargetError            an action URL resolves to an address that is not allowed
    └── UnknownActionError(KeyError) ``TRIGGER.ACTION`` names no configured action
"""

from __future__ import annotations

__all__ = ["ConfigError", "ImportRowError", "LeadpostError", "UnknownActionError", "UnsafeTargetError"]


class LeadpostError(Exception):
    """Base class of every error leadpost raises on purpose."""


class ConfigError(LeadpostError, ValueError):
    """The configuration is invalid; ``problems`` lists every problem, each prefixed with its place."""

    def __init__(self, problems: list[str], *, source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"{head}{len(self.problems)} {noun}:\n" + "\n".join(f"  {p}" for p in self.problems))


class ImportRowError(LeadpostError, ValueError):
    """One row of an import file was rejected."""

    def __init__(self, line: int, reason: str) -> None:
        self.line = line
        self.reason = reason
        super().__init__(f"line {line}: {reason}")


class UnsafeTargetError(LeadpostError):
    """The target host resolves to a private, loopback, link-local or metadata address."""


class UnknownActionError(LeadpostError, KeyError):
    """``TRIGGER.ACTION`` does not name a configured action."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown action"
