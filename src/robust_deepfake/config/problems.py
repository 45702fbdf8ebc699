"""How params problems are reported: one line per problem, each naming its dotted key:
`<source>: <dotted.key>: <what is wrong> (got <value>)`."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from robust_deepfake.errors import StageError


class ConfigError(StageError, ValueError):
    """params.yaml is unreadable or invalid; str() is one line per problem, each naming the key."""


class Problems(ValueError):
    """Raised by a validator that checks several keys at once: one (key, message, got) per
    problem, the key relative to the validator's model (`eps`, `report.reference_eps`);
    format_errors turns each into its own line naming the full dotted key."""

    def __init__(self, problems: list[tuple[str, str, str | None]]) -> None:
        super().__init__("; ".join(f"{key}: {message}" for key, message, _ in problems))
        self.problems = problems


def raise_problems(problems: list[tuple[str, str, str | None]]) -> None:
    """Raise Problems when there are any (a multi-key validator's last line)."""
    if problems:
        raise Problems(problems)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def format_errors(source: str, error: ValidationError) -> str:
    """One line per problem: `<source>: <dotted.key>: <what is wrong> (got <value>)`."""
    lines = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, Problems):
            for key, message, got in cause.problems:
                suffix = f" (got {got})" if got is not None else ""
                lines.append(f"{source}: {'.'.join([*loc, key])}: {message}{suffix}")
            continue
        key = ".".join(loc) or "<root>"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        got = item.get("input")
        quiet = item["type"] in {"extra_forbidden", "missing"} or (
            item["type"] == "value_error" and ("got " in message or isinstance(got, dict)))
        lines.append(f"{source}: {key}: {message}" + ("" if quiet else f" (got {_shown(got)})"))
    return "\n".join(lines)
