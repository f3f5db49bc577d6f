"""Who may change which run, checked in the code path that changes it.

Every page that cancels, resumes, deletes or submits a run calls these functions instead of the
runner directly; a hidden or disabled button is a courtesy, these are the check. Outside workshop
mode the actor is `LOCAL`, who may do anything (KD Lab as a single-user tool). In a workshop a
participant changes only their own runs; the instructor changes any. Every run a workshop member
submits records them as its owner, and passes the room's policy (`app.workshop.policy`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kdcore.errors import KDError
from kdcore.runner import Runner
from kdcore.store import RunRecord

LOCAL_ROLE, PARTICIPANT, INSTRUCTOR = "local", "participant", "instructor"
WORKSHOP_OWNER_CAP = 3  # queued + running runs per participant unless KDCORE_MAX_RUNS_PER_OWNER says otherwise


class PermissionDenied(KDError):
    """The actor may not do this to this run (or this room)."""


@dataclass(frozen=True)
class Actor:
    """Who is acting: the owner name their runs carry, and their role."""

    name: str | None
    role: str

    @property
    def is_instructor(self) -> bool:
        return self.role == INSTRUCTOR

    @property
    def in_workshop(self) -> bool:
        return self.role != LOCAL_ROLE


LOCAL = Actor(None, LOCAL_ROLE)


def can_change(actor: Actor, record: RunRecord) -> bool:
    """May `actor` cancel, resume or delete this run?"""
    if actor.role in (LOCAL_ROLE, INSTRUCTOR):
        return True
    return actor.role == PARTICIPANT and actor.name is not None and record.owner == actor.name


def require_instructor(actor: Actor, what: str) -> None:
    if actor.in_workshop and not actor.is_instructor:
        raise PermissionDenied(f"only the instructor can {what}")


def _require_change(actor: Actor, record: RunRecord, verb: str) -> None:
    if not can_change(actor, record):
        owner = f"{record.owner}'s" if record.owner else "nobody's"
        raise PermissionDenied(f"{record.id} is {owner} run; only its owner or the instructor can {verb} it")


def workshop_runner(runner: Runner) -> Runner:
    """The same store, with the workshop's per-owner cap as the default."""
    return Runner(runner.store, owner_cap=WORKSHOP_OWNER_CAP)


def cancel(runner: Runner, actor: Actor, run_id: str) -> RunRecord:
    _require_change(actor, runner.store.get_run(run_id), "cancel")
    return runner.cancel(run_id)


def resume(runner: Runner, actor: Actor, run_id: str) -> RunRecord:
    _require_change(actor, runner.store.get_run(run_id), "resume")
    if actor.role == PARTICIPANT:  # a resumed run is queued again: it counts against the cap
        from kdcore.sweep import check_owner_room

        check_owner_room(workshop_runner(runner), actor.name, 1)
    return runner.resume(run_id)


def delete(runner: Runner, actor: Actor, run_id: str) -> None:
    _require_change(actor, runner.store.get_run(run_id), "delete")
    runner.delete(run_id)


def submit(runner: Runner, actor: Actor, config: Any, *, room: Any = None, name: str | None = None,
           sweep_id: str | None = None, challenge_entry: bool = False,
           parameter_count: Callable[[str, tuple, int], int] | None = None) -> str:
    """Queue `config` (a RunConfig) for `actor`. In a workshop: the room must be open to participants,
    the run must pass the room's policy (paths; the budget for participants), and it is the actor's.
    A challenge entry is held to the challenge's limits instead of the room's budget (dataset, teacher,
    the student's parameters counted by `parameter_count`, default `kdcore.models.parameter_count`, and
    the challenge's budget), whoever submits it."""
    if not actor.in_workshop:
        return runner.submit(config, name=name, sweep_id=sweep_id)
    from app.workshop import policy

    if room is None:
        raise PermissionDenied("no workshop room to submit to")
    if actor.role == PARTICIPANT and not room.is_open():
        raise PermissionDenied("the room is closed: the instructor is not taking new runs right now")
    policy.check_text("run name", name if name is not None else config.name)
    challenge = room.challenge() if challenge_entry else None
    if challenge_entry and challenge is None:
        raise PermissionDenied("there is no challenge to enter right now")
    policy.check_run(config.to_dict(), is_upload=runner.store.is_upload,
                     budget=None if actor.is_instructor or challenge_entry else room.budget())
    if challenge is not None:
        policy.check_challenge_entry(config.to_dict(), challenge, parameter_count or _parameter_count)
    return workshop_runner(runner).submit(config, name=name, sweep_id=sweep_id, owner=actor.name)


def _parameter_count(arch: str, input_shape: tuple, num_classes: int) -> int:
    from kdcore.models import parameter_count  # torch: only when a challenge entry is submitted

    return parameter_count(arch, input_shape, num_classes)
