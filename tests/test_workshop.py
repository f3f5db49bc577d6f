"""Workshop mode without Streamlit: the room's policy, who may change which run, the room in the store.

The permission checks are exercised where the actions happen (`app.workshop.permissions`), on a real
store and runner: a participant who calls cancel/resume/delete on someone else's run is refused and
the run is untouched, whatever the page showed them.
"""

from __future__ import annotations

import subprocess

import pytest

from app.text import plain
from app.workshop import permissions, policy
from app.workshop.permissions import INSTRUCTOR, LOCAL, PARTICIPANT, Actor, PermissionDenied
from app.workshop.room import Challenge, JoinRefused, Room, token_matches
from kdcore.config import RunConfig
from kdcore.errors import KDError
from kdcore.owners import OwnerLimitError
from kdcore.runner import Runner
from kdcore.store import Store

TOKEN = "s3cret-token"
DIGITS = RunConfig().replace(dataset="digits", epochs=1, baseline=False, **{"teacher.epochs": 1})


@pytest.fixture()
def store(kd_home, monkeypatch):
    monkeypatch.delenv("KDCORE_MAX_RUNS_PER_OWNER", raising=False)
    monkeypatch.setenv("KDCORE_MAX_RUNS", "1")
    s = Store(kd_home)
    yield s
    s.close()


@pytest.fixture()
def room(store):
    return Room(store, TOKEN)


@pytest.fixture()
def sleeper():
    """A live process that is not this one: a stand-in worker that may be cancelled (SIGTERM) safely."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture()
def busy_runner(store, sleeper):
    """A runner whose only slot is taken by a stand-in worker, so submitted runs stay queued (no worker starts)."""
    def make(store: Store = store) -> Runner:
        store.create_run({}, status="running", pid=sleeper)
        return Runner(store)
    return make


# --- policy --------------------------------------------------------------------------------------------------


def test_only_bundled_datasets_and_the_instructors_are_allowed():
    allowed = policy.allowed_datasets({})
    assert allowed[:2] == ["mnist-5k", "digits"] and "moons" in allowed
    assert "mnist" not in allowed and "cifar10" not in allowed  # would download into the server's folders
    assert policy.allowed_datasets({policy.ALLOWED_DATASETS_ENV: "imagefolder:/srv/pets, cifar10"})[-2:] == [
        "imagefolder:/srv/pets", "cifar10"]


@pytest.mark.parametrize("change, message", [
    ({"dataset": "imagefolder:/etc"}, "dataset 'imagefolder:/etc' is not available in this workshop"),
    ({"dataset": "mnist"}, "dataset 'mnist' is not available"),
    ({"data_root": "/etc"}, "a data folder cannot be set in this workshop"),
    ({"transfer": "imagefolder:/home"}, "transfer set 'imagefolder:/home' is not available in this workshop"),
    ({"teacher": {"arch": "hf:/srv/models/bert", "epochs": 1}}, "teacher.arch 'hf:/srv/models/bert' is not available"),
    ({"student": {"arch": "timm:resnet50"}}, "student.arch 'timm:resnet50' is not available"),
    ({"teacher": {"arch": "cnn", "epochs": 1, "checkpoint": "/etc/passwd"}}, "must be uploaded through the form"),
    ({"tracking": {"mlflow": None, "tensorboard": "/etc/tb"}}, "experiment trackers (tracking.mlflow, tracking.tensorboard) "
                                                             "cannot be set"),
])
def test_a_run_that_reaches_a_server_path_is_refused(change, message):
    config = {**DIGITS.to_dict(), **change}
    with pytest.raises(policy.WorkshopPolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        policy.check_run(config, is_upload=lambda path: False, budget=None, environ={})


def test_an_uploaded_checkpoint_and_custom_mlp_widths_are_allowed(store):
    path = store.save_upload("../../teacher.pt", b"not really a checkpoint")
    config = {**DIGITS.to_dict(), "teacher": {**DIGITS.to_dict()["teacher"], "checkpoint": str(path)},
              "student": {"arch": "mlp:32,16"}}
    policy.check_run(config, is_upload=store.is_upload, budget=None, environ={})
    assert not store.is_upload(store.home / "kdcore.db") and not store.is_upload("/etc/passwd")


def test_the_budget_is_epochs_times_training_examples():
    # digits: 1,797 examples, 20% test, then 10% of the rest for validation → 1,294 training examples
    assert policy.training_examples("digits", 0.1) == 1294
    assert policy.run_budget(DIGITS.to_dict()) == (1 + 1) * 1294
    assert policy.run_budget(DIGITS.replace(baseline=True, finetune_epochs=2).to_dict()) == (1 + 2 + 2) * 1294
    assert policy.run_budget(RunConfig().to_dict()) <= policy.DEFAULT_BUDGET  # the teaching preset fits
    big = DIGITS.replace(epochs=500).to_dict()
    with pytest.raises(policy.WorkshopPolicyError, match=r"would train 648,294 example-epochs .* limit per run is 10,000"):
        policy.check_run(big, is_upload=lambda path: False, budget=10_000, environ={})


def test_uploads_and_names_have_limits():
    policy.check_upload(1024, {})
    with pytest.raises(policy.WorkshopPolicyError, match="limited to 1 MB"):
        policy.check_upload(2 * 1024 * 1024, {policy.UPLOAD_LIMIT_ENV: "1"})
    with pytest.raises(policy.WorkshopPolicyError, match="at most 60 characters"):
        policy.check_text("run name", "x" * 61)
    with pytest.raises(policy.WorkshopPolicyError, match="printable"):
        policy.check_text("run name", "two\nlines")


@pytest.mark.parametrize("typed, shown", [
    ("**bold**", r"\*\*bold\*\*"), ("![x](http://evil/a.png)", r"\!\[x\]\(http\:\/\/evil\/a\.png\)"),
    ("<b>hi</b>", r"\<b\>hi\<\/b\>"), (":red[alert]", r"\:red\[alert\]"), ("a\nb", "a b"), (None, ""),
])
def test_names_are_escaped_for_markdown(typed, shown):
    assert plain(typed) == shown


# --- permissions, where the actions happen ---------------------------------------------------------------------


def test_a_participant_changes_only_their_own_runs_and_the_instructor_any(store, room, busy_runner):
    runner = busy_runner(store)
    alice, bob = room.join("alice").actor, room.join("bob").actor
    teacher = room.sign_in_instructor(TOKEN).actor
    run_a = permissions.submit(runner, alice, DIGITS, room=room)
    assert store.get_run(run_a).owner == "alice"
    for action in (permissions.cancel, permissions.delete, permissions.resume):
        with pytest.raises(PermissionDenied, match=f"{run_a} is alice's run; only its owner or the instructor"):
            action(runner, bob, run_a)
    with pytest.raises(PermissionDenied):
        permissions.cancel(runner, Actor(None, "reader"), run_a)
    assert store.get_run(run_a).status == "queued"  # untouched
    assert permissions.cancel(runner, alice, run_a).status == "cancelled"
    permissions.resume(runner, alice, run_a)
    permissions.cancel(runner, teacher, run_a)
    permissions.delete(runner, teacher, run_a)
    assert [r.id for r in store.list_runs(owner="alice")] == []
    assert permissions.can_change(LOCAL, store.get_run(permissions.submit(runner, LOCAL, DIGITS)))


def test_a_participant_submits_as_themselves_within_the_cap_and_the_policy(store, room, busy_runner):
    runner = busy_runner(store)
    alice = room.join("alice").actor
    for seed in range(permissions.WORKSHOP_OWNER_CAP):
        permissions.submit(runner, alice, DIGITS.replace(seed=seed), room=room)
    with pytest.raises(OwnerLimitError, match="cap is 3"):
        permissions.submit(runner, alice, DIGITS, room=room)
    with pytest.raises(policy.WorkshopPolicyError, match="limit per run is 1,000"):
        room.set_budget(room.sign_in_instructor(TOKEN).actor, 1000)
        permissions.submit(runner, room.join("bob").actor, DIGITS, room=room)
    with pytest.raises(policy.WorkshopPolicyError, match="dataset 'imagefolder:/etc'"):
        permissions.submit(runner, room.join("carol").actor, DIGITS.replace(dataset="imagefolder:/etc"), room=room)


def test_a_closed_room_takes_no_one_new_and_no_new_runs(store, room, busy_runner):
    runner = busy_runner(store)
    alice = room.join("alice")
    with pytest.raises(PermissionDenied, match="only the instructor can open or close the room"):
        room.set_open(alice.actor, False)
    instructor = room.sign_in_instructor(TOKEN).actor
    room.set_open(instructor, False)
    with pytest.raises(JoinRefused, match="the room is closed"):
        room.join("bob")
    with pytest.raises(PermissionDenied, match="the room is closed"):
        permissions.submit(runner, alice.actor, DIGITS, room=room)
    permissions.submit(runner, instructor, DIGITS, room=room)  # the instructor still can
    room.set_open(instructor, True)
    permissions.submit(runner, alice.actor, DIGITS, room=room)


def test_a_challenge_entry_is_held_to_the_challenges_limits_and_other_runs_to_the_rooms(store, room, busy_runner):
    runner = busy_runner(store)
    alice, instructor = room.join("alice").actor, room.sign_in_instructor(TOKEN).actor
    entry = DIGITS.replace(**{"teacher.arch": "cnn-small", "teacher.epochs": 4})  # the default challenge's teacher
    with pytest.raises(PermissionDenied, match="no challenge to enter"):
        permissions.submit(runner, alice, entry, room=room, challenge_entry=True)
    room.set_challenge(instructor, Challenge(max_student_params=5000, budget=20_000))
    big_student = entry.replace(**{"student.arch": "mlp:128"})  # 9,610 parameters on digits
    with pytest.raises(policy.WorkshopPolicyError) as refused:
        permissions.submit(runner, alice, big_student.replace(dataset="mnist-5k"), room=room, challenge_entry=True)
    message = str(refused.value)  # one message naming every broken limit
    assert message.startswith("not a valid challenge entry: the dataset must be digits, not mnist-5k")
    assert "has 101,770 parameters, over the limit of 5,000" in message
    with pytest.raises(policy.WorkshopPolicyError, match="9,610 parameters, over the limit of 5,000"):
        permissions.submit(runner, instructor, big_student, room=room, challenge_entry=True)  # rules are for all
    with pytest.raises(policy.WorkshopPolicyError, match="the teacher must be the challenge's cnn-small"):
        permissions.submit(runner, alice, DIGITS, room=room, challenge_entry=True)
    with pytest.raises(policy.WorkshopPolicyError, match="over the challenge's budget of 20,000"):
        permissions.submit(runner, alice, entry.replace(epochs=20), room=room, challenge_entry=True)
    counted = []
    run_id = permissions.submit(runner, alice, entry, room=room, challenge_entry=True,
                                parameter_count=lambda *args: counted.append(args) or 4810)
    assert counted == [("mlp-small", (1, 8, 8), 10)] and store.get_run(run_id).owner == "alice"
    permissions.submit(runner, alice, big_student, room=room)  # not an entry: only the room's policy
    room.set_budget(instructor, 1000)  # the room's budget binds other runs, not entries
    permissions.submit(runner, room.join("bob").actor, entry, room=room, challenge_entry=True)
    with pytest.raises(policy.WorkshopPolicyError, match="limit per run is 1,000"):
        permissions.submit(runner, room.join("carol").actor, entry, room=room)


# --- the room --------------------------------------------------------------------------------------------------


def test_joining_gives_an_unguessable_key_and_unique_names(room):
    alice, bob = room.join("alice"), room.join(" bob ")
    assert bob.name == "bob" and alice.role == PARTICIPANT
    assert len(alice.key) == 24 and alice.key != bob.key
    assert room.member(alice.key) == alice and room.member(alice.key[:-1] + "x") in (None, alice) and \
        room.member("../../etc") is None and room.member(None) is None
    with pytest.raises(JoinRefused, match="already called 'ALICE'"):
        room.join("ALICE")
    with pytest.raises(JoinRefused, match="reserved"):
        room.join("Instructor")
    with pytest.raises(JoinRefused, match="name must be at most 40 characters"):
        room.join("x" * 41)
    assert [m.name for m in room.participants()] == ["alice", "bob"]


def test_the_instructor_signs_in_with_the_token_only(room):
    with pytest.raises(PermissionDenied, match="wrong instructor token"):
        room.sign_in_instructor("guess")
    assert not token_matches("", None) and not token_matches("x", "")
    assert room.sign_in_instructor(TOKEN).role == INSTRUCTOR
    assert Room(room.store, None).member("x" * 24) is None
    with pytest.raises(PermissionDenied):
        Room(room.store, None).sign_in_instructor("")


def test_the_challenge_is_the_instructors_and_reveals_test_accuracy_on_demand(room):
    alice, instructor = room.join("alice").actor, room.sign_in_instructor(TOKEN).actor
    with pytest.raises(PermissionDenied, match="only the instructor can set the challenge"):
        room.set_challenge(alice, Challenge())
    with pytest.raises(KDError, match="not available in this workshop"):
        room.set_challenge(instructor, Challenge(dataset="cifar10"))
    room.set_challenge(instructor, Challenge(max_student_params=5000, budget=123_456))
    assert room.challenge().max_student_params == 5000 and room.budget() == 123_456
    assert not room.challenge().revealed
    with pytest.raises(PermissionDenied):
        room.reveal_test_accuracy(alice)
    room.reveal_test_accuracy(instructor)
    assert room.challenge().revealed


def test_predictions_lock_when_their_run_starts(room):
    alice = room.join("alice")
    with pytest.raises(KDError, match="record a prediction before"):
        room.attach_run(alice, "alone-vs-distilled", "run-00000000")
    room.predict(alice, "alone-vs-distilled", 2)
    room.predict(alice, "alone-vs-distilled", 3.5)
    room.attach_run(alice, "alone-vs-distilled", "run-00000001")
    with pytest.raises(KDError, match="locked"):
        room.predict(alice, "alone-vs-distilled", 9)
    with pytest.raises(KDError, match="between -100 and 100"):
        room.predict(room.join("bob"), "alone-vs-distilled", 1000)
    assert [(p["name"], p["value"], p["run_id"]) for p in room.predictions("alone-vs-distilled")] == [
        ("alice", 3.5, "run-00000001")]


def test_room_sweep_cells_go_out_once_each_then_repeat_with_the_next_seed(room):
    instructor = room.sign_in_instructor(TOKEN).actor
    base = DIGITS.to_dict()
    with pytest.raises(PermissionDenied):
        room.start_room_sweep(room.join("zed").actor, base, {"temperature": [1, 4]})
    room.start_room_sweep(instructor, base, {"temperature": [1, 4]})
    members = [room.join(name) for name in ("a", "b", "c")]
    cells = [room.cell(m) for m in members]
    assert [(c["values"]["temperature"], c["seed"]) for c in cells] == [(1, 0), (4, 0), (1, 1)]
    assert room.cell(members[0]) == cells[0]  # asking again gives the same cell
    config = room.cell_config(cells[2])
    assert config.temperature == 1 and config.seed == DIGITS.seed + 1


def test_reset_cancels_runs_forgets_the_room_and_keeps_the_instructor(store, room, busy_runner):
    runner = busy_runner(store)
    alice = room.join("alice")
    instructor = room.sign_in_instructor(TOKEN)
    run_id = permissions.submit(runner, alice.actor, DIGITS, room=room)
    room.predict(alice, "alone-vs-distilled", 1)
    with pytest.raises(PermissionDenied):
        room.reset(alice.actor, runner)
    outcome = room.reset(instructor.actor, runner)
    assert outcome["cancelled"] >= 1 and store.get_run(run_id).status == "cancelled"
    assert room.member(alice.key) is None and room.member(instructor.key) == instructor
    assert room.participants() == [] and room.predictions("alone-vs-distilled") == []
    room.join("alice")  # the name is free again
