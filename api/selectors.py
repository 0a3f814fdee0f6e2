"""Label selector matching, as the apiserver does it for webhook and object selectors."""

from collections.abc import Mapping

from api.types import LabelSelector


def matches(selector: LabelSelector | None, labels: Mapping[str, str] | None) -> bool:
    """An absent selector matches nothing; an empty one matches everything (Kubernetes semantics)."""
    if selector is None:
        return False
    labels = labels or {}
    for key, value in (selector.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    for requirement in selector.match_expressions or []:
        present = requirement.key in labels
        values = requirement.values or []
        if requirement.operator == "In" and not (present and labels[requirement.key] in values):
            return False
        if requirement.operator == "NotIn" and present and labels[requirement.key] in values:
            return False
        if requirement.operator == "Exists" and not present:
            return False
        if requirement.operator == "DoesNotExist" and present:
            return False
    return True
