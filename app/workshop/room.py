"""A workshop room: its members, whether it is open, the challenge, the room sweep, predictions.

Everything lives in the run store's settings (`workshop.*` keys), so every Streamlit session and a
restarted server see the same room. A member is known by a random key (kept in the participant's
URL): 144 random bits, so one participant's key says nothing about another's. Display names are
unique in the room (case-insensitively) because they are the owners of runs. No Streamlit here.
"""

from __future__ import annotations

import hmac
import itertools
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from app.workshop import policy
from app.workshop.permissions import INSTRUCTOR, PARTICIPANT, Actor, PermissionDenied, require_instructor
from kdcore.errors import KDError
from kdcore.owners import validate_owner
from kdcore.store import ACTIVE, Store

TOKEN_ENV = "KDLAB_WORKSHOP_TOKEN"
INSTRUCTOR_NAME = "instructor"  # the owner of the instructor's runs; no participant may take it
PREFIX = "workshop."
_KEY = re.compile(r"^[A-Za-z0-9_-]{24}$")  # secrets.token_urlsafe(18)
PREDICTION_MAX = 100.0  # points: a prediction is a difference of accuracies in percentage points


class JoinRefused(KDError):
    """A display name that cannot join (taken, reserved, malformed) or a closed room."""


@dataclass(frozen=True)
class Member:
    key: str
    name: str
    role: str
    joined: float

    @property
    def actor(self) -> Actor:
        return Actor(self.name, self.role)


@dataclass
class Challenge:
    """What the room competes on: a dataset, a fixed teacher, a parameter limit for the student, a budget."""

    title: str = "Beat the baseline"
    dataset: str = "digits"
    teacher_arch: str = "cnn-small"
    teacher_epochs: int = 4
    max_student_params: int = 20_000
    budget: int = policy.DEFAULT_BUDGET
    started: float = field(default_factory=time.time)
    revealed: bool = False  # test accuracy shown on the leaderboard (the instructor reveals it at the end)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Challenge:
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def token_matches(given: str, token: str | None) -> bool:
    """The instructor's token, compared in constant time; never matches when no token is set."""
    return bool(token) and isinstance(given, str) and hmac.compare_digest(given.encode(), token.encode())


class Room:
    """The room of one run store."""

    def __init__(self, store: Store, token: str | None) -> None:
        self.store = store
        self._token = token

    # --- members ---------------------------------------------------------------------------------------------

    def join(self, name: str) -> Member:
        """A participant joins with a display name; returns them with their new key."""
        if not self.is_open():
            raise JoinRefused("the room is closed; ask the instructor to open it")
        name = name.strip() if isinstance(name, str) else name
        try:
            validate_owner(name)
        except KDError as exc:
            raise JoinRefused(str(exc).replace("owner", "name", 1)) from None
        if name.casefold() == INSTRUCTOR_NAME:
            raise JoinRefused(f"the name {name!r} is reserved; choose another")
        member = Member(secrets.token_urlsafe(18), name, PARTICIPANT, time.time())
        if not self.store.set_setting_if_absent(f"{PREFIX}name.{name.casefold()}", member.key):
            raise JoinRefused(f"someone in the room is already called {name!r}; choose another name")
        self._save(member)
        return member

    def sign_in_instructor(self, token: str) -> Member:
        if not token_matches(token, self._token):
            raise PermissionDenied("wrong instructor token")
        member = Member(secrets.token_urlsafe(18), INSTRUCTOR_NAME, INSTRUCTOR, time.time())
        self._save(member)
        return member

    def _save(self, member: Member) -> None:
        self.store.set_setting(f"{PREFIX}member.{member.key}",
                               json.dumps({"name": member.name, "role": member.role, "joined": member.joined}))

    def member(self, key: str | None) -> Member | None:
        """The member with this key; None for a malformed, unknown or forgotten key."""
        if not isinstance(key, str) or not _KEY.match(key):
            return None
        raw = self.store.get_setting(f"{PREFIX}member.{key}")
        if raw is None:
            return None
        data = json.loads(raw)
        return Member(key, data["name"], data["role"], data["joined"])

    def participants(self) -> list[Member]:
        """Participants by the time they joined."""
        out = []
        for setting, raw in self.store.settings_with_prefix(f"{PREFIX}member.").items():
            data = json.loads(raw)
            if data["role"] == PARTICIPANT:
                out.append(Member(setting.rsplit(".", 1)[1], data["name"], data["role"], data["joined"]))
        return sorted(out, key=lambda m: m.joined)

    # --- the room's settings -----------------------------------------------------------------------------------

    def is_open(self) -> bool:
        return self.store.get_setting(f"{PREFIX}open") != "0"

    def set_open(self, actor: Actor, is_open: bool) -> None:
        require_instructor(actor, "open or close the room")
        self.store.set_setting(f"{PREFIX}open", "1" if is_open else "0")

    def budget(self) -> int:
        """The per-run budget in example-epochs (epochs × training examples)."""
        raw = self.store.get_setting(f"{PREFIX}budget")
        return int(raw) if raw else policy.DEFAULT_BUDGET

    def set_budget(self, actor: Actor, budget: int) -> None:
        require_instructor(actor, "set the budget")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
            raise KDError(f"the budget must be a positive number of example-epochs, got {budget!r}")
        self.store.set_setting(f"{PREFIX}budget", str(budget))

    # --- the challenge -------------------------------------------------------------------------------------------

    def challenge(self) -> Challenge | None:
        raw = self.store.get_setting(f"{PREFIX}challenge")
        return Challenge.from_json(raw) if raw else None

    def set_challenge(self, actor: Actor, challenge: Challenge) -> None:
        """Start (or restart) the challenge: runs submitted from now on compete."""
        require_instructor(actor, "set the challenge")
        from kdcore.config import RunConfig

        if challenge.dataset not in policy.allowed_datasets():
            raise KDError(f"dataset {challenge.dataset!r} is not available in this workshop")
        RunConfig().replace(dataset=challenge.dataset, **{"teacher.arch": challenge.teacher_arch,
                                                          "teacher.epochs": challenge.teacher_epochs})
        if challenge.max_student_params <= 0 or challenge.budget <= 0:
            raise KDError("the parameter limit and the budget must be positive")
        policy.check_text("challenge title", challenge.title)
        self.store.set_setting(f"{PREFIX}challenge", challenge.to_json())
        self.set_budget(actor, challenge.budget)

    def reveal_test_accuracy(self, actor: Actor, revealed: bool = True) -> None:
        require_instructor(actor, "reveal test accuracy")
        challenge = self.challenge()
        if challenge is None:
            raise KDError("there is no challenge to reveal")
        challenge.revealed = revealed
        self.store.set_setting(f"{PREFIX}challenge", challenge.to_json())

    # --- predictions ------------------------------------------------------------------------------------------------

    def predict(self, member: Member, lesson: str, value: float) -> None:
        """Record (or change, until its run starts) `member`'s prediction for a lesson."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -PREDICTION_MAX <= value <= PREDICTION_MAX:
            raise KDError(f"a prediction is a number of points between -{PREDICTION_MAX:g} and {PREDICTION_MAX:g}")
        key = f"{PREFIX}prediction.{lesson}.{member.key}"
        current = self.prediction(member, lesson)
        if current and current.get("run_id"):
            raise KDError("your prediction is locked: its run has started")
        self.store.set_setting(key, json.dumps({"name": member.name, "value": float(value), "t": time.time(),
                                                "run_id": None}))

    def prediction(self, member: Member, lesson: str) -> dict[str, Any] | None:
        raw = self.store.get_setting(f"{PREFIX}prediction.{lesson}.{member.key}")
        return json.loads(raw) if raw else None

    def attach_run(self, member: Member, lesson: str, run_id: str) -> None:
        current = self.prediction(member, lesson)
        if current is None:
            raise KDError("record a prediction before running the lesson")
        current["run_id"] = run_id
        self.store.set_setting(f"{PREFIX}prediction.{lesson}.{member.key}", json.dumps(current))

    def predictions(self, lesson: str) -> list[dict[str, Any]]:
        """Every prediction for a lesson: name, value, t, run_id."""
        rows = [json.loads(raw) for raw in self.store.settings_with_prefix(f"{PREFIX}prediction.{lesson}.").values()]
        return sorted(rows, key=lambda row: row["t"])

    # --- the room sweep -------------------------------------------------------------------------------------------

    def start_room_sweep(self, actor: Actor, base: dict[str, Any], grid: dict[str, list[Any]]) -> str:
        """Record a sweep whose cells the participants run, one each. Nothing is queued here."""
        require_instructor(actor, "start a room sweep")
        from kdcore.sweep import expand

        runs = expand(base, grid)  # every cell validated before the sweep exists
        policy.check_run(runs[0][1].to_dict(), is_upload=self.store.is_upload, budget=None)
        sweep_id = self.store.create_sweep({"name": "room sweep", "base": base, "grid": grid, "size": len(runs),
                                            "room": True})
        self.store.set_setting(f"{PREFIX}room_sweep", sweep_id)
        return sweep_id

    def room_sweep(self) -> dict[str, Any] | None:
        sweep_id = self.store.get_setting(f"{PREFIX}room_sweep")
        return self.store.get_sweep(sweep_id) if sweep_id else None

    def cell(self, member: Member) -> dict[str, Any] | None:
        """`member`'s cell of the room sweep: {index, values, seed}, handed out on first asking.

        Cells go out in grid order; once every cell has someone, the next participants repeat them
        with the next seed, so a bigger room gives each point of the curve more seeds.
        """
        sweep = self.room_sweep()
        if sweep is None:
            return None
        prefix = f"{PREFIX}cell.{sweep['sweep_id']}."
        mine = self.store.get_setting(f"{prefix}of.{member.key}")
        if mine is None:
            for slot in itertools.count():
                if self.store.set_setting_if_absent(f"{prefix}slot.{slot:05d}", member.key):
                    self.store.set_setting(f"{prefix}of.{member.key}", str(slot))
                    mine = str(slot)
                    break
        slot = int(mine)
        combos = list(itertools.product(*sweep["grid"].values()))
        index = slot % len(combos)
        return {"index": index, "values": dict(zip(sweep["grid"], combos[index])), "seed": slot // len(combos)}

    def cell_config(self, cell: dict[str, Any]) -> Any:
        """The RunConfig of a cell: the sweep's base with the cell's values and seed."""
        from kdcore.config import RunConfig, set_dotted

        sweep = self.room_sweep()
        data = json.loads(json.dumps(sweep["base"]))
        for key, value in cell["values"].items():
            set_dotted(data, key, value)
        data["seed"] = int(data.get("seed", 0)) + cell["seed"]
        return RunConfig.from_dict(data)

    # --- reset ---------------------------------------------------------------------------------------------------------

    def reset(self, actor: Actor, runner: Any, *, delete_runs: bool = False) -> dict[str, int]:
        """Start afresh: cancel every active run, forget members (everyone joins again), predictions,
        the challenge and the room sweep; with `delete_runs`, delete every run of the store too."""
        require_instructor(actor, "reset the room")
        cancelled = 0
        for record in self.store.list_runs(status=list(ACTIVE)):
            runner.cancel(record.id)
            cancelled += 1
        deleted = 0
        if delete_runs:
            runner.wait([r.id for r in self.store.list_runs(status=list(ACTIVE))], timeout_s=60)
            for record in self.store.list_runs():
                if record.status not in ACTIVE:
                    runner.delete(record.id)
                    deleted += 1
        instructors = {key: raw for key, raw in self.store.settings_with_prefix(f"{PREFIX}member.").items()
                       if json.loads(raw)["role"] == INSTRUCTOR}
        forgotten = self.store.delete_settings(PREFIX)
        for key, raw in instructors.items():  # the instructor stays signed in
            self.store.set_setting(key, raw)
        return {"cancelled": cancelled, "deleted": deleted, "forgotten": forgotten - len(instructors)}
