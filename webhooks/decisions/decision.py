"""The answer of an admission decision, independent of the AdmissionReview wire format."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from api.types import InvalidObject

STATUS_OK: Final = 200
STATUS_BAD_REQUEST: Final = 400
STATUS_FORBIDDEN: Final = 403


@dataclass(frozen=True)
class Decision:
    """allowed + RFC 6902 patch (empty = none) + status message/code, warnings and audit annotations."""

    allowed: bool = True
    patch: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    code: int = STATUS_OK
    warnings: list[str] = field(default_factory=list)
    audit_annotations: dict[str, str] = field(default_factory=dict)


def deny(message: str, code: int = STATUS_FORBIDDEN) -> Decision:
    return Decision(allowed=False, message=message, code=code)


def deny_invalid(invalid: Sequence[InvalidObject], consequence: str) -> Decision:
    """Fail closed on stored objects the models reject, naming each one, why, and what it holds up."""
    return deny("; ".join(o.describe() for o in invalid) + f": {consequence} until it is fixed or deleted")
