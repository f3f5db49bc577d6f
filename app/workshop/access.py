"""Who this browser session is, and the run actions bound to that identity (the Streamlit side).

Workshop mode is on when `KDLAB_WORKSHOP_TOKEN` is set in the app's environment. A participant's
key rides in the URL (`?p=…`): a reload or a shared tab keeps it, and every page puts it back into
the URL after a page switch drops it. The instructor's key stays in this browser session only (a URL
on a projector must not hand out instructor rights): after a reload the instructor signs in again.
Pages call `cancel`, `resume`, `delete` and `submit` here; each checks the actor (`permissions`).
"""

from __future__ import annotations

import os

import streamlit as st

from app import session
from app.workshop import permissions
from app.workshop.permissions import LOCAL, Actor
from app.workshop.room import TOKEN_ENV, Member, Room
from kdcore.store import RunRecord

URL_KEY = "p"
_STATE_KEY = "_kdlab_workshop_key"


def enabled() -> bool:
    return bool(os.environ.get(TOKEN_ENV))


def room() -> Room:
    return Room(session.store(), os.environ.get(TOKEN_ENV))


def member() -> Member | None:
    """This session's member (participant or instructor), from the session or the URL; None if unknown."""
    if not enabled():
        return None
    current = room()
    found = current.member(st.session_state.get(_STATE_KEY))
    if found is None:
        found = current.member(st.query_params.get(URL_KEY))
        if found is not None and found.role != permissions.PARTICIPANT:
            found = None  # an instructor key is never accepted from a URL
    if found is None:
        st.session_state.pop(_STATE_KEY, None)
        return None
    st.session_state[_STATE_KEY] = found.key
    if found.role == permissions.PARTICIPANT and st.query_params.get(URL_KEY) != found.key:
        st.query_params[URL_KEY] = found.key
    return found


def remember(new_member: Member) -> None:
    """Make `new_member` this session's identity (after joining or signing in)."""
    st.session_state[_STATE_KEY] = new_member.key
    if new_member.role == permissions.PARTICIPANT:
        st.query_params[URL_KEY] = new_member.key
    elif URL_KEY in st.query_params:
        del st.query_params[URL_KEY]


def forget() -> None:
    st.session_state.pop(_STATE_KEY, None)
    if URL_KEY in st.query_params:
        del st.query_params[URL_KEY]


def actor() -> Actor:
    """Who acts: LOCAL outside workshop mode; in it, the member, or an anonymous reader who may change nothing."""
    if not enabled():
        return LOCAL
    found = member()
    return found.actor if found is not None else Actor(None, "reader")


def can_change(record: RunRecord) -> bool:
    return permissions.can_change(actor(), record)


def cancel(run_id: str) -> RunRecord:
    return permissions.cancel(session.runner(), actor(), run_id)


def resume(run_id: str) -> RunRecord:
    return permissions.resume(session.runner(), actor(), run_id)


def delete(run_id: str) -> None:
    permissions.delete(session.runner(), actor(), run_id)


def repeat_seeds(run_or_sweep_id: str, seeds: int) -> list[str]:
    """Queue the missing seeds of a run's config, or of every cell of a sweep (`kdcore.seeds`); in a
    workshop only the instructor may (participants' runs count against their cap, and they start runs
    from their own page)."""
    from kdcore.seeds import repeat_run, repeat_sweep

    permissions.require_instructor(actor(), "queue more seeds")
    if run_or_sweep_id.startswith("sweep-"):
        return repeat_sweep(session.runner(), run_or_sweep_id, seeds)
    return repeat_run(session.runner(), run_or_sweep_id, seeds)


def may_repeat_seeds() -> bool:
    who = actor()
    return not who.in_workshop or who.is_instructor


def submit(config, *, name: str | None = None, sweep_id: str | None = None, challenge_entry: bool = False) -> str:
    who = actor()
    if who.in_workshop and who.name is None:
        raise permissions.PermissionDenied("join the workshop before starting a run")
    return permissions.submit(session.runner(), who, config, room=room() if who.in_workshop else None, name=name,
                              sweep_id=sweep_id, challenge_entry=challenge_entry,
                              parameter_count=session.parameter_count)
