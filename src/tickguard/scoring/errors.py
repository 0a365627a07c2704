"""The one error type of the scoring layer: carries the HTTP status and per-field problems."""

from __future__ import annotations

from typing import Any

# A batch of 10,000 broken rows must not produce a 10,000-entry error body.
MAX_REPORTED_PROBLEMS = 100


class ScoringError(Exception):
    """Bad input (or an unusable model) described well enough to return as a JSON error."""

    def __init__(
        self,
        status: int,
        message: str,
        problems: list[dict[str, Any]] | None = None,
        code: str = "invalid_input",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.problems = problems or []

    def to_dict(self) -> dict[str, Any]:
        """JSON body: `error` is a string, so the body is also a valid Open Inference Protocol error."""
        body: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.problems:
            body["problems"] = self.problems[:MAX_REPORTED_PROBLEMS]
            body["problem_count"] = len(self.problems)
            if len(self.problems) > MAX_REPORTED_PROBLEMS:
                body["problems_truncated"] = True
        return body


def problem(row: int | None, field: str | None, issue: str) -> dict[str, Any]:
    """One offending value: `row` is the 0-based row index (None = every row), `field` the feature."""
    return {"row": row, "field": field, "problem": issue}
