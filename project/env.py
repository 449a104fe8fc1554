"""Read settings from the environment, remembering what was wrong.

Settings never raise on a bad value at import time (that would hide every other
problem behind the first traceback).  Each reader returns the default instead and
records the problem; ``project.checks`` turns the records into Django system check
errors with stable IDs, so ``manage.py check`` (and every process at start) names
each wrong setting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class EnvProblem:
    name: str
    value: str
    message: str


PROBLEMS: list[EnvProblem] = []


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name: str, default: str) -> str:
    value = _raw(name)
    return default if value is None else value


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        PROBLEMS.append(EnvProblem(name, value, "must be a whole number"))
        return default
    if minimum is not None and number < minimum or maximum is not None and number > maximum:
        PROBLEMS.append(EnvProblem(name, value, f"must be between {minimum} and {maximum}"))
        return default
    return number


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        PROBLEMS.append(EnvProblem(name, value, "must be a number"))
        return default
    if minimum is not None and number < minimum:
        PROBLEMS.append(EnvProblem(name, value, f"must be at least {minimum}"))
        return default
    return number


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    PROBLEMS.append(EnvProblem(name, value, "must be one of true/false, yes/no, on/off, 1/0"))
    return default


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    value = _raw(name)
    if value is None:
        return list(default or [])
    return [item.strip() for item in value.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: set[str]) -> str:
    value = _raw(name)
    if value is None:
        return default
    if value not in choices:
        PROBLEMS.append(EnvProblem(name, value, f"must be one of {', '.join(sorted(choices))}"))
        return default
    return value


def record(name: str, value: str, message: str) -> None:
    PROBLEMS.append(EnvProblem(name, value, message))
