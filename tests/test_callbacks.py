"""Tests for kdcore.callbacks: every hook is optional, and CallbackList hands each call to every callback."""

from __future__ import annotations

import pytest

from kdcore.callbacks import Callback, CallbackList

# one call of every hook, with the arguments the trainer passes
CALLS = [
    ("on_stage_start", ("student", 2, 10)),
    ("on_metrics", ("student", 1, 3, {"train_loss": 0.5})),
    ("on_epoch_end", ("student", 1, {"val_acc": 0.9})),
    ("on_snapshot", ("student", 1, {"indices": [0, 1]})),
    ("on_stage_end", ("student", {"test_acc": 0.8})),
    ("on_resume", ("student", 1)),
    ("on_log", ("a line",)),
]


class Recorder(Callback):
    """Records every call it receives."""

    def __init__(self, stop: bool = False) -> None:
        self.calls: list[tuple] = []
        self.stop = stop

    def on_stage_start(self, *args):
        self.calls.append(("on_stage_start", args))

    def on_metrics(self, *args):
        self.calls.append(("on_metrics", args))

    def on_epoch_end(self, *args):
        self.calls.append(("on_epoch_end", args))

    def on_snapshot(self, *args):
        self.calls.append(("on_snapshot", args))

    def on_stage_end(self, *args):
        self.calls.append(("on_stage_end", args))

    def on_resume(self, *args):
        self.calls.append(("on_resume", args))

    def on_log(self, *args):
        self.calls.append(("on_log", args))

    def should_stop(self) -> bool:
        return self.stop


def test_the_base_callback_accepts_every_hook_and_never_stops():
    callback = Callback()
    for hook, args in CALLS:
        assert getattr(callback, hook)(*args) is None
    assert callback.should_stop() is False


def test_a_callback_overrides_only_what_it_needs():
    class Losses(Callback):
        def __init__(self):
            self.losses = []

        def on_metrics(self, stage, epoch, step, values):
            self.losses.append(values["train_loss"])

    callback = Losses()
    for hook, args in CALLS:
        getattr(callback, hook)(*args)
    assert callback.losses == [0.5]


@pytest.mark.parametrize("hook,args", CALLS, ids=[hook for hook, _ in CALLS])
def test_callback_list_fans_every_hook_out_in_order(hook, args):
    first, second = Recorder(), Recorder()
    getattr(CallbackList([first, second]), hook)(*args)
    assert first.calls == second.calls == [(hook, args)]


def test_callback_list_stops_when_any_callback_asks():
    assert CallbackList().should_stop() is False
    assert CallbackList([Recorder(), Recorder()]).should_stop() is False
    assert CallbackList([Recorder(), Recorder(stop=True)]).should_stop() is True
    assert CallbackList([Recorder(stop=True), Recorder()]).should_stop() is True


def test_callback_list_copies_its_list():
    callbacks = [Recorder()]
    fan_out = CallbackList(callbacks)
    callbacks.append(Recorder())
    fan_out.on_log("only the first hears this")
    assert callbacks[0].calls and not callbacks[1].calls
