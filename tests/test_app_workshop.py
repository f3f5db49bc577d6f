"""Workshop mode under Streamlit's AppTest: the door, the participant's key in the URL, a New run page with no
server-path inputs, owner-only actions on Runs and Live (enforced, not only hidden), names drawn as text, the
instructor's page, the leaderboard, the room sweep and the lessons.

No run trains here: the one training slot (KDCORE_MAX_RUNS=1) is held by a run recorded under this test
process, so submitted runs stay queued and the tests read what the app recorded.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from app.text import plain
from app.workshop import lessons, policy
from app.workshop.room import Challenge, Room
from app_helpers import ENTRY
from kdcore.config import RunConfig
from kdcore.store import Store
from streamlit.testing.v1 import AppTest

TOKEN = "workshop-token-for-tests"
TIMEOUT = 60
DIGITS = RunConfig().replace(dataset="digits", epochs=1, baseline=False, **{"teacher.epochs": 1})


@pytest.fixture()
def room(kd_home, monkeypatch):
    """A workshop room in a fresh store whose only slot is taken, with alice and bob joined."""
    monkeypatch.setenv("KDLAB_WORKSHOP_TOKEN", TOKEN)
    monkeypatch.setenv("KDCORE_MAX_RUNS", "1")
    monkeypatch.delenv("KDCORE_MAX_RUNS_PER_OWNER", raising=False)
    store = Store(kd_home)
    busy = store.create_run({}, status="running", pid=os.getpid())
    room = Room(store, TOKEN)
    room.alice, room.bob = room.join("alice"), room.join("bob")
    room.instructor = room.sign_in_instructor(TOKEN)
    yield room
    store.finish(busy, "cancelled")
    store.close()


def open_as(member, page: str | None = None, state: dict | None = None, **query: str) -> AppTest:
    """The app as `member` (None: a visitor), switched to `screens/<page>.py` with these query parameters and
    this session state. A participant comes with their key in the URL; the instructor with their key in the
    session."""
    at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT)
    if member is not None and member.role == "participant":
        at.query_params["p"] = member.key
    elif member is not None:
        at.session_state["_kdlab_workshop_key"] = member.key
    at.run()
    if page is not None:
        at.switch_page(f"screens/{page}.py")
        at.query_params.update(query)
        for key, value in (state or {}).items():
            at.session_state[key] = value
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def queue(room, member, config: RunConfig = DIGITS, **changes) -> str:
    from app.workshop import permissions
    from kdcore.runner import Runner

    return permissions.submit(Runner(room.store), member.actor, config.replace(**changes), room=room)


# --- the door and identity ----------------------------------------------------------------------------------------


def test_without_the_token_the_app_is_the_single_user_lab(kd_home, monkeypatch):
    monkeypatch.delenv("KDLAB_WORKSHOP_TOKEN", raising=False)
    at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT).run()
    assert at.title[0].value == "New run"
    assert at.text_input(key="nr_data_root") is not None


def test_a_visitor_sees_only_the_door_and_joins_with_a_key_kept_in_the_url(room):
    at = open_as(None)
    assert at.title[0].value == "Join the workshop"
    assert [t.key for t in at.text_input] == ["ws_name", "ws_token"]
    at.text_input(key="ws_name").input("carol")
    at.button[0].click().run()  # the form's Join
    key = at.query_params["p"]
    assert len(key) == 24 and room.member(key).name == "carol"
    assert at.title[0].value == "Welcome, carol"
    reloaded = open_as(room.member(key))  # a reload: a new session with only the URL
    assert reloaded.title[0].value == "Welcome, carol"


def test_a_taken_name_and_a_wrong_token_are_refused(room):
    at = open_as(None)
    at.text_input(key="ws_name").input("ALICE")
    at.button[0].click().run()
    assert any("already called 'ALICE'" in e.value for e in at.error) and "p" not in at.query_params
    at.text_input(key="ws_token").input("guess")
    at.button[1].click().run()
    assert any("wrong instructor token" in e.value for e in at.error)


def test_the_instructor_signs_in_with_the_token_and_is_not_put_in_the_url(room):
    at = open_as(None)
    at.text_input(key="ws_token").input(TOKEN)
    at.button[1].click().run()
    assert at.title[0].value == "Welcome, instructor" and "p" not in at.query_params
    at.switch_page("screens/instructor.py").run()
    assert at.title[0].value == "Instructor" and not at.exception


# --- New run: no server paths, the owner recorded, the budget -----------------------------------------------------------


def test_the_workshop_new_run_page_offers_no_server_path_inputs(room):
    at = open_as(room.alice, "new_run")
    assert at.title[0].value == "New run"
    assert [t.key for t in at.text_input] == ["nr_name"]  # no Data folder, nothing else typed
    assert at.text_input(key="nr_name").proto.max_chars == policy.NAME_MAX_CHARS
    assert list(at.selectbox(key="nr_dataset").options) == policy.allowed_datasets()
    for key in ("nr_dataset", "nr_teacher_arch", "nr_student_arch"):
        assert not at.selectbox(key=key).proto.accept_new_options, key  # only listed names, nothing typed
    at.radio(key="nr_teacher_source").set_value("upload").run()
    uploaders = at.get("file_uploader")
    assert len(uploaders) == 1 and uploaders[0].proto.max_upload_size_mb == policy.DEFAULT_UPLOAD_MB


def test_start_records_the_participant_as_the_runs_owner(room):
    at = open_as(room.alice, "new_run")
    at.selectbox(key="nr_dataset").set_value("digits").run()
    for key, value in (("nr_epochs", 1), ("nr_teacher_epochs", 1)):
        at.number_input(key=key).set_value(value).run()
    at.toggle(key="nr_baseline").set_value(False).run()
    at.button(key="nr_start").click().run()
    run_id = at.query_params["run"]
    record = room.store.get_run(run_id)
    assert record.owner == "alice" and record.status == "queued"
    assert at.query_params["p"] == room.alice.key  # still alice after the switch to the live page


def test_a_config_copied_from_a_run_brings_no_server_path(room):
    source = room.store.create_run(RunConfig().replace(data_root="/srv/private", transfer="fashion-mnist").to_dict())
    at = open_as(room.alice, "new_run", **{"from": source})
    assert at.selectbox(key="nr_dataset").value == "mnist-5k" and not at.error
    at.button(key="nr_start").click().run()
    record = room.store.get_run(at.query_params["run"])
    assert record.owner == "alice" and record.config["data_root"] is None and record.config["transfer"] is None


def test_a_run_over_the_rooms_budget_cannot_start(room):
    room.set_budget(room.instructor.actor, 10_000)
    at = open_as(room.alice, "new_run")  # the teaching preset: 244,800 example-epochs
    assert at.button(key="nr_start").disabled
    assert any("limit per run is 10,000" in e.value for e in at.error)
    assert room.store.list_runs(owner="alice") == []


# --- someone else's run: readable, not changeable -------------------------------------------------------------------


def test_bob_reads_alices_run_but_cannot_cancel_or_delete_it_and_the_instructor_can(room, monkeypatch):
    run_id = queue(room, room.alice)
    at = open_as(room.bob, "runs", state={"_kdlab_runs_selected": run_id})
    assert run_id in list(at.dataframe[0].value["run"]) and "alice" in list(at.dataframe[0].value["owner"])
    assert at.button(key="runs_cancel").disabled and at.button(key="runs_resume").disabled
    assert any("Someone else's run" in c.value for c in at.caption)

    # A page that got it wrong and offered the buttons: the action itself still refuses bob.
    from app.workshop import access

    with monkeypatch.context() as patch:
        patch.setattr(access, "can_change", lambda record: True)
        at = open_as(room.bob, "runs", state={"_kdlab_runs_selected": run_id})
        at.button(key="runs_cancel").click().run()
        assert any("alice's run; only its owner or the instructor can cancel it" in e.value for e in at.error)
        at.button(key="runs_delete").click().run()
        assert any("only its owner or the instructor can delete it" in e.value for e in at.error)
    assert room.store.get_run(run_id).status == "queued"
    live = open_as(room.bob, "live", run=run_id)
    assert _has_no(live, f"cancel_{run_id}")  # the live page offers bob no Cancel

    own = open_as(room.alice, "live", run=run_id)
    assert not own.button(key=f"cancel_{run_id}").disabled

    teacher = open_as(room.instructor, "runs", state={"_kdlab_runs_selected": run_id})
    assert not teacher.button(key="runs_cancel").disabled
    teacher.button(key="runs_cancel").click().run()
    assert room.store.get_run(run_id).status == "cancelled"
    teacher.button(key="runs_delete").click().run()
    assert room.store.list_runs(owner="alice") == []


def _has_no(at: AppTest, key: str) -> bool:
    try:
        at.button(key=key)
    except KeyError:
        return True
    return False


def test_names_are_drawn_as_text_not_markdown(room):
    name = "**boss** ![x](http://evil.example/x.png) <b>hi</b>"
    run_id = queue(room, room.alice, name=name)
    live = open_as(room.alice, "live", run=run_id)
    assert live.title[0].value == plain(name)
    assert any(f"by {plain('alice')}" in c.value for c in live.caption)
    runs = open_as(room.alice, "runs", state={"_kdlab_runs_selected": run_id})
    assert any(plain(name) in m.value for m in runs.markdown)


# --- the instructor, the leaderboard, the room sweep, the lessons ---------------------------------------------------------


def test_the_instructor_closes_the_room_and_starts_a_challenge(room):
    at = open_as(room.instructor, "instructor")
    at.button(key="in_open").click().run()
    assert not room.is_open()
    assert open_as(None).button[0].disabled  # the door's Join
    at.button(key="in_open").click().run()
    submit = next(b for b in at.button if b.label == "Start the challenge")
    submit.click().run()
    assert room.challenge() is not None and not room.challenge().revealed
    at.button(key="in_reveal").click().run()
    assert room.challenge().revealed


def test_a_challenge_entry_outside_the_limits_is_refused_with_one_message(room):
    room.set_challenge(room.instructor.actor, Challenge(max_student_params=3000))
    at = open_as(room.alice, "leaderboard")
    at.button(key="lb_start").click().run()  # the challenge's settings in the New run form, entered
    assert at.title[0].value == "New run"
    at.switch_page("screens/new_run.py").run()  # AppTest reruns the page it was told, not the one switched to
    assert at.toggle(key="nr_challenge_entry").value
    assert [e.value for e in at.error] == ["not a valid challenge entry: the student has 4,810 parameters, "
                                           "over the limit of 3,000"]
    assert at.button(key="nr_start").disabled
    at.toggle(key="nr_challenge_entry").set_value(False).run()  # not an entry: the room's policy only
    assert not at.error and not at.button(key="nr_start").disabled
    at.toggle(key="nr_challenge_entry").set_value(True).run()
    at.selectbox(key="nr_student_arch").set_value("mlp-tiny").run()  # 1,210 parameters
    assert not at.error
    at.button(key="nr_start").click().run()
    record = room.store.get_run(at.query_params["run"])
    assert record.owner == "alice" and record.config["student"]["arch"] == "mlp-tiny"


def finished(room, member, *, val: float, test: float, params: int, created: float | None = None, **changes) -> str:
    """A run recorded as done with these numbers (nothing trains)."""
    config = DIGITS.replace(**{"teacher.arch": "cnn-small", "teacher.epochs": 4}, **changes).to_dict()
    run_id = room.store.create_run(config, owner=member.name)
    room.store.finish(run_id, "done", summary={"student_val_acc": val, "student_test_acc": test,
                                               "baseline_val_acc": 0.9, "teacher_val_acc": 0.98,
                                               "student_params": params})
    return run_id


def test_the_leaderboard_ranks_best_runs_by_validation_accuracy_and_hides_test_accuracy(room):
    room.set_challenge(room.instructor.actor, Challenge(started=time.time() - 1))
    finished(room, room.alice, val=0.95, test=0.93, params=10_000)
    best = finished(room, room.alice, val=0.96, test=0.91, params=12_000)
    finished(room, room.bob, val=0.955, test=0.97, params=5_000)
    finished(room, room.bob, val=0.99, test=0.99, params=50_000)  # over the parameter limit: not ranked
    at = open_as(room.bob, "leaderboard")
    table = at.dataframe[0].value
    assert list(table["owner"]) == ["alice", "bob"] and table["run"].iloc[0] == best
    assert table["test_acc"].isna().all() and table["gap_closed"].iloc[0] == pytest.approx(0.75)
    room.reveal_test_accuracy(room.instructor.actor)
    revealed = open_as(room.bob, "leaderboard").dataframe[0].value
    assert list(revealed["test_acc"]) == [0.91, 0.97]


def test_a_participant_runs_their_cell_of_the_room_sweep(room):
    base = RunConfig().replace(**lessons.LESSON_PRESET).to_dict()
    sweep_id = room.start_room_sweep(room.instructor.actor, base, {"temperature": [1.0, 4.0]})
    at = open_as(room.bob, "room_sweep")
    assert any("temperature = 1" in m.value for m in at.markdown)
    at.button(key="rs_run").click().run()
    runs = room.store.list_runs(sweep_id=sweep_id)
    assert [(r.owner, r.config["temperature"]) for r in runs] == [("bob", 1.0)]
    assert not at.exception


def test_lesson_three_records_a_prediction_before_it_runs(room):
    at = open_as(room.alice, "lessons", lesson=lessons.ALONE_VS_DISTILLED)
    assert at.title[0].value == lessons.LESSONS[2].title
    at.number_input[0].set_value(2.5)
    at.button[0].click().run()  # Save my prediction
    assert room.prediction(room.alice, lessons.ALONE_VS_DISTILLED)["value"] == 2.5
    at.button(key="ls_run").click().run()
    run_id = room.prediction(room.alice, lessons.ALONE_VS_DISTILLED)["run_id"]
    record = room.store.get_run(run_id)
    assert record.owner == "alice" and record.config["dataset"] == lessons.LESSON_PRESET["dataset"]
    assert record.config["baseline"] is True


def test_lessons_one_and_two_use_the_fixed_example_while_the_store_has_no_teacher(room):
    at = open_as(room.alice, "lessons", lesson="soft-labels")
    assert at.caption[0].value == lessons.SEVEN.source
    assert at.metric[0].label == "Probability of 7"
    expected = np.exp(np.array(lessons.SEVEN_LOGITS)) / np.exp(np.array(lessons.SEVEN_LOGITS)).sum()
    assert at.metric[0].value == f"{expected[7]:.1%}"


def test_lessons_one_and_two_use_the_stores_trained_teacher(room):
    from kdcore import teachers
    from kdcore.temperature import teacher_logits

    config = RunConfig(dataset="digits")
    path = teachers.install(config.teacher_key(), room.store.teacher_dir())
    run_id = room.store.create_run(config.to_dict(), owner="alice")
    room.store.finish(run_id, "done", summary={"teacher_key": config.teacher_key()})
    data = teacher_logits(config, path)  # the reference: numpy softmax over the teacher's validation logits
    logits, labels = data.logits.double().numpy(), data.labels.numpy()
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    right = np.flatnonzero(probs.argmax(1) == labels)
    index = right[np.argmin(np.abs(probs[right].max(1) - lessons.CONFIDENT))]
    name = data.class_names[labels[index]]

    at = open_as(room.alice, "lessons", lesson="soft-labels")
    assert at.caption[0].value.startswith(f"Validation example {index} of the teacher trained in this store on digits")
    assert at.metric[0].label == f"Probability of {name}" and at.metric[0].value == f"{probs[index].max():.1%}"
    at = open_as(room.bob, "lessons", lesson="dark-knowledge")
    soft = np.exp(logits[index] / 4) / np.exp(logits[index] / 4).sum()  # the slider starts at T = 4
    runner_up = data.class_names[np.argsort(soft)[-2]]
    assert f"the likeliest mistakes are **{runner_up}** ({np.sort(soft)[-2]:.1%})" in at.markdown[-1].value
    assert not at.exception


@pytest.mark.parametrize("lesson", [lesson.slug for lesson in lessons.LESSONS])
def test_every_lesson_renders(room, lesson):
    at = open_as(room.alice, "lessons", lesson=lesson)
    assert at.title[0].value == next(item.title for item in lessons.LESSONS if item.slug == lesson)
