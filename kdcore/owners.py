"""Who a run belongs to, and how many runs one owner may have waiting or training at once.

An owner is a short printable name (`submit --owner alice`, a workshop participant's display name).
The queue is fair across owners (see `Store.claim_next`); `KDCORE_MAX_RUNS_PER_OWNER` caps one
owner's queued + running runs, so one person cannot fill the queue for a whole room. No torch here.
"""

from __future__ import annotations

import os

from kdcore.errors import ConfigError, KDError

OWNER_MAX_CHARS = 40  # fits a leaderboard column and a CLI table; long enough for "Firstname Lastname"
MAX_RUNS_PER_OWNER_ENV = "KDCORE_MAX_RUNS_PER_OWNER"


class OwnerLimitError(KDError):
    """An owner already has as many queued + running runs as the per-owner cap allows."""


def validate_owner(owner: object) -> str:
    """The owner name, checked: 1 to OWNER_MAX_CHARS printable characters, no surrounding spaces.

    Printable excludes newlines, tabs and control characters, so a name can neither break a table
    row nor a log line. What a name may *mean* in Markdown is the renderer's business (the app draws
    names as plain text).
    """
    if not isinstance(owner, str):
        raise ConfigError(f"owner must be a name, got {owner!r}")
    if not owner or owner != owner.strip():
        raise ConfigError(f"owner must be a non-empty name without leading or trailing spaces, got {owner!r}")
    if len(owner) > OWNER_MAX_CHARS:
        raise ConfigError(f"owner must be at most {OWNER_MAX_CHARS} characters, got {len(owner)}")
    if not owner.isprintable():
        raise ConfigError(f"owner must be printable characters only (no newlines, tabs or control characters), "
                          f"got {owner!r}")
    return owner


def max_runs_per_owner(default: int | None = None) -> int | None:
    """KDCORE_MAX_RUNS_PER_OWNER, else `default` (None: no cap; workshop mode passes 3)."""
    raw = os.environ.get(MAX_RUNS_PER_OWNER_ENV, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{MAX_RUNS_PER_OWNER_ENV} must be a positive integer, got {raw!r}")
    return value


def limit_message(owner: str, active: int, cap: int, adding: int = 1) -> str:
    """The one line that refuses a submission over the cap."""
    more = "another run" if adding == 1 else f"{adding} more runs"
    return (f"owner {owner!r} already has {active} queued or running run{'s' if active != 1 else ''} and the cap is "
            f"{cap} ({MAX_RUNS_PER_OWNER_ENV}); cannot queue {more} until one finishes or is cancelled")
