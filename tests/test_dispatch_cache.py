"""The dispatcher remembers its choice per kind of call (cropcore.dispatch_cache, issue 16), and
every rule of selection still holds after a choice is remembered: backend=, use_backend (per
thread), CROPCORE_BACKEND, the priority list, backends that come and go, declines hooks, and the
warnings. Torch tensors, because NumPy calls take dispatch's other quick route."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

import cropcore
from cropcore import dispatch, dispatch_cache

torch = pytest.importorskip("torch")

BOXES = [[0.0, 0.0, 1.0, 1.0]]


@pytest.fixture(autouse=True)
def _fresh_cache():
    dispatch_cache.clear()
    yield
    dispatch_cache.clear()


@pytest.fixture
def timage() -> torch.Tensor:
    return torch.arange(2 * 4 * 5 * 3, dtype=torch.float32).reshape(2, 4, 5, 3)


def crop(image, boxes=BOXES, indices=(0,), **kwargs):
    return cropcore.crop_and_resize(
        image, torch.tensor(boxes), torch.tensor(indices, dtype=torch.int32), (2, 3), **kwargs
    )


def test_calls_of_one_kind_are_chosen_for_once(timage, monkeypatch):
    chosen = []
    real = dispatch.select

    def counted(*args, **kwargs):
        chosen.append(1)
        return real(*args, **kwargs)

    crop(timage)  # discovers the backends (a new registry generation), then remembers
    crop(timage)
    monkeypatch.setattr(dispatch, "select", counted)
    for _ in range(3):
        out = crop(timage)
    assert isinstance(out, torch.Tensor)
    assert chosen == []


def test_use_backend_is_obeyed_after_a_remembered_choice(register_backend, timage):
    first, second = register_backend("fakefirst"), register_backend("fakesecond")
    cropcore.set_priority(["fakefirst", "fakesecond"])
    crop(timage)
    with cropcore.use_backend("fakesecond"):
        crop(timage)
    crop(timage)
    assert (len(first.calls), len(second.calls)) == (2, 1)


def test_use_backend_in_another_thread_stays_there(register_backend, timage):
    first, second = register_backend("fakefirst"), register_backend("fakesecond")
    cropcore.set_priority(["fakefirst", "fakesecond"])
    crop(timage)
    inside, go_on = threading.Event(), threading.Event()

    def other():
        with cropcore.use_backend("fakesecond"):
            crop(timage)
            inside.set()
            go_on.wait(10)
            crop(timage)

    thread = threading.Thread(target=other)
    thread.start()
    inside.wait(10)
    crop(timage)  # this thread has no override
    go_on.set()
    thread.join()
    assert (len(first.calls), len(second.calls)) == (2, 2)


def test_set_priority_is_obeyed_after_a_remembered_choice(register_backend, timage):
    first, second = register_backend("fakefirst"), register_backend("fakesecond")
    cropcore.set_priority(["fakefirst", "fakesecond"])
    crop(timage)
    cropcore.set_priority(["fakesecond", "fakefirst"])
    crop(timage)
    assert (len(first.calls), len(second.calls)) == (1, 1)


def test_the_environment_is_obeyed_after_a_remembered_choice(
    register_backend, timage, cropcore_env
):
    first, second = register_backend("fakefirst"), register_backend("fakesecond")
    cropcore.set_priority(["fakefirst", "fakesecond"])
    crop(timage)
    cropcore_env.set("CROPCORE_BACKEND", "fakesecond")
    crop(timage)
    cropcore_env.delete("CROPCORE_BACKEND")
    crop(timage)
    assert (len(first.calls), len(second.calls)) == (2, 1)


def test_a_backend_registered_later_is_chosen(register_backend, timage):
    second = register_backend("fakesecond")
    cropcore.set_priority(["fakefirst", "fakesecond"])  # fakefirst not installed yet
    crop(timage)
    first = register_backend("fakefirst")
    crop(timage)
    assert (len(first.calls), len(second.calls)) == (1, 1)


def test_an_unregistered_backend_is_not_chosen(register_backend, timage):
    from cropcore.registry import registry

    first, second = register_backend("fakefirst"), register_backend("fakesecond")
    cropcore.set_priority(["fakefirst", "fakesecond"])
    crop(timage)
    registry.unregister("fakefirst")
    crop(timage)
    assert (len(first.calls), len(second.calls)) == (1, 1)


def _declines_two_boxes(call) -> str | None:
    return "two boxes, no" if call.boxes.shape[0] == 2 else None


@pytest.mark.parametrize("order", ["one box first", "two boxes first"])
def test_a_declines_hook_is_asked_on_every_call(register_backend, timage, order):
    first = register_backend("fakefirst", declines=_declines_two_boxes)
    second = register_backend("fakesecond")
    cropcore.set_priority(["fakefirst", "fakesecond"])
    calls = [(BOXES, (0,)), (BOXES * 2, (0, 1))]
    if order == "two boxes first":
        calls.reverse()
    for boxes, indices in calls * 2:
        crop(timage, boxes, indices)
    assert (len(first.calls), len(second.calls)) == (2, 2)
    assert all(c.boxes.shape[0] == 1 for c in first.calls)


def test_a_named_backend_that_declines_still_raises(register_backend, timage):
    register_backend("fakefirst", declines=_declines_two_boxes)
    crop(timage, backend="fakefirst")
    with pytest.raises(cropcore.errors.BackendDeclinedError, match="two boxes, no"):
        crop(timage, BOXES * 2, (0, 1), backend="fakefirst")


def test_the_detached_warning_is_given_on_every_call(timage):
    image = timage.clone().requires_grad_()
    for _ in range(2):
        with pytest.warns(RuntimeWarning, match="detached"):
            out = crop(image, backend="numpy")
        assert not out.requires_grad


def test_autograd_is_looked_for_again_when_grad_is_wanted(register_backend, timage):
    plain = register_backend("fakeplain")
    grad = register_backend("fakegrad", autograd=True)
    cropcore.set_priority(["fakeplain", "fakegrad"])
    crop(timage)
    crop(timage.clone().requires_grad_())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crop(timage)
    assert (len(plain.calls), len(grad.calls)) == (2, 1)


def test_the_result_is_the_uncached_result(timage):
    first = crop(timage)
    second = crop(timage)
    dispatch_cache.clear()
    third = crop(timage)
    assert np.array_equal(first.numpy(), second.numpy())
    assert np.array_equal(first.numpy(), third.numpy())


def test_every_decision_is_logged_at_debug_after_a_remembered_choice(timage, caplog):
    crop(timage)
    crop(timage)
    with caplog.at_level("DEBUG", logger="cropcore.dispatch"):
        crop(timage)
    assert "runs on backend 'torch'" in caplog.text
