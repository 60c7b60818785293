"""Which roles the LLM runs in each investigation mode, on which model tier, and within which limits.

A mode (fast, balanced, deep: the `model_tier` of an agent task) maps each role the LLM runs to a
tier, whose model id the worker's settings name (LLM_MODEL_FAST, LLM_MODEL_BALANCED,
LLM_MODEL_DEEP); a role the mode does not list runs the rule reasoner. By default:

- fast: the rule reasoner everywhere, then one LLM pass (RECOMMEND) on the cheap tier;
- balanced: the LLM hypothesizes, verifies and concludes on the balanced tier, and reads the
  ticket and chat (GATHER's context part) on the cheap tier: extraction, not reasoning;
- deep: the LLM also triages (after the rule reasoner's triage), all on the deep tier (and the
  engine allows more hypothesis iterations).

Nothing here imports a client: the settings validate against these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MODES = ("fast", "balanced", "deep")
# The roles an LLM can run. Of GATHER, only the context part: logs, metrics, traces and changes are
# collected by the rule reasoner (cheap, complete and cited); what people wrote needs reading.
LLM_ROLES = ("triage", "gather.context", "hypothesize", "verify", "recommend")
LIMIT_NAMES = ("max_turns", "max_tokens")
LIMIT_RANGES = {"max_turns": (1, 100), "max_tokens": (256, 64_000)}

DEFAULT_MODE_ROLES: Mapping[str, Mapping[str, str]] = {
    "fast": {"recommend": "fast"},
    "balanced": {"gather.context": "fast", "hypothesize": "balanced", "verify": "balanced", "recommend": "balanced"},
    "deep": {"triage": "deep", "gather.context": "deep", "hypothesize": "deep", "verify": "deep", "recommend": "deep"},
}
# Roles not listed use LLM_MAX_TURNS and LLM_MAX_TOKENS. A ranked list of hypotheses, or a
# checklist for several, needs more room for its answer than a verdict.
DEFAULT_ROLE_LIMITS: Mapping[str, Mapping[str, int]] = {
    "hypothesize": {"max_turns": 8, "max_tokens": 8192},
    "verify": {"max_turns": 16, "max_tokens": 8192},
}


def mode_roles(value: Any) -> dict[str, dict[str, str]]:
    """`value` (mode -> role -> tier) checked, over the defaults: modes not given keep theirs."""
    if not isinstance(value, Mapping):
        raise ValueError('expected a JSON object of mode -> {role: tier}, e.g. {"fast": {"recommend": "fast"}}')
    merged = {mode: dict(roles) for mode, roles in DEFAULT_MODE_ROLES.items()}
    for mode, roles in value.items():
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes are {', '.join(MODES)}")
        if not isinstance(roles, Mapping):
            raise ValueError(f"mode {mode}: expected an object of role -> tier")
        for role, tier in roles.items():
            if role not in LLM_ROLES:
                raise ValueError(f"mode {mode}: the LLM cannot run role {role!r}; it runs {', '.join(LLM_ROLES)}")
            if tier not in MODES:
                raise ValueError(f"mode {mode}, role {role}: unknown tier {tier!r}; tiers are {', '.join(MODES)}")
        merged[mode] = {str(role): str(tier) for role, tier in roles.items()}
    return merged


def role_limits(value: Any) -> dict[str, dict[str, int]]:
    """`value` (role -> {max_turns, max_tokens}) checked."""
    if not isinstance(value, Mapping):
        raise ValueError('expected a JSON object of role -> limits, e.g. {"verify": {"max_turns": 16}}')
    checked: dict[str, dict[str, int]] = {}
    for role, limits in value.items():
        if role not in LLM_ROLES:
            raise ValueError(f"the LLM cannot run role {role!r}; it runs {', '.join(LLM_ROLES)}")
        if not isinstance(limits, Mapping):
            raise ValueError(f"role {role}: expected an object with max_turns and/or max_tokens")
        checked[str(role)] = {}
        for name, number in limits.items():
            if name not in LIMIT_NAMES:
                raise ValueError(f"role {role}: unknown limit {name!r}; limits are {', '.join(LIMIT_NAMES)}")
            low, high = LIMIT_RANGES[name]
            if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
                raise ValueError(f"role {role}: {name} must be a whole number from {low} to {high}")
            checked[str(role)][str(name)] = number
    return checked
