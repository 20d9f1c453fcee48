"""The whole :class:`Policy` and loading it: from YAML text, or the packaged default."""

from __future__ import annotations

from functools import cache
from importlib import resources

import yaml

from models.policy.cancellation import CancellationDecisions
from models.policy.changes import ChangeDecisions
from models.policy.pauses import PauseDecisions


class Policy(ChangeDecisions, CancellationDecisions, PauseDecisions):
    """The whole policy document.

    Attributes:
        version: The document format version (1).
        approver_groups: Approver group name -> member ids (the approver directory).
        default: Rules that apply when no segment or plan rule does; must be complete.
        segments: Rules per segment (``self_serve``, ``enterprise``).
        plans: Rules per plan id.
    """


def load_policy(text: str) -> Policy:
    """Parse and validate a policy YAML document.

    Raises:
        ValueError: For YAML that does not parse or is not a mapping; pydantic's
            ``ValidationError`` (a ``ValueError``) naming the field path of every problem.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"policy is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(
            "a policy document is a YAML mapping with approver_groups, default, segments, plans"
        )
    return Policy.model_validate(data)


@cache
def default_policy() -> Policy:
    """The policy shipped in ``models/data/policy.yaml`` (parsed once; the model is frozen)."""
    text = resources.files("models").joinpath("data/policy.yaml").read_text()
    return load_policy(text)
