"""rustcoder.serve.turns: concurrent generations share one model token by token, in arrival order, one computing at
a time, each with its own random stream (the transformers engine's scheduler; no model needed here)."""

from __future__ import annotations

import threading
import time

import pytest

from rustcoder.serve.turns import Cancelled, Turn, TurnPool, Turns

torch = pytest.importorskip("torch")


def _wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _generation(turns: Turns, name: str, steps: int, log: list, holders: list, start: threading.Event | None = None):
    """A generation: while holding its turn it records one 'token' per step, then hands the turn on."""
    with turns.holding(Turn()):
        if start is not None:
            start.wait(5)
        for _ in range(steps):
            holders.append(1)
            assert len(holders) == 1, "two generations computed at once"
            log.append(name)
            time.sleep(0.001)
            holders.pop()
            turns.step()


def test_concurrent_generations_take_turns_token_by_token_in_arrival_order():
    turns, log, holders, go = Turns(), [], [], threading.Event()
    first = threading.Thread(target=_generation, args=(turns, "a", 6, log, holders, go))
    first.start()
    _wait_for(lambda: turns._holder is not None)
    others = []
    for name in "bc":  # they arrive while "a" holds the model
        others.append(threading.Thread(target=_generation, args=(turns, name, 6, log, holders)))
        others[-1].start()
        _wait_for(lambda n=len(others): len(turns._waiting) == n)
    go.set()
    for t in (first, *others):
        t.join(10)
    assert "".join(log) == "abc" * 6  # round robin, one step each
    assert turns.handoffs >= 17


def test_a_generation_alone_keeps_its_turn_without_handoffs():
    turns, log = Turns(), []
    _generation(turns, "a", 50, log, [])
    assert log == ["a"] * 50 and turns.handoffs == 0 and turns._holder is None


def test_a_long_generation_does_not_hold_the_model_while_a_short_one_waits():
    """The issue's case: one long answer is running; a short one that arrives later ends long before it."""
    turns, log, ended = Turns(), [], {}

    def run(name, steps):
        _generation(turns, name, steps, log, [])
        ended[name] = len(log)

    long = threading.Thread(target=run, args=("long", 400))
    long.start()
    _wait_for(lambda: len(log) > 5)
    run("short", 4)
    long.join(10)
    assert ended["short"] < 20 and ended["long"] == 404  # the short one got every other step


def test_a_generation_cancelled_while_waiting_leaves_the_queue():
    turns, cancelled = Turns(), threading.Event()
    held = Turn()
    turns.acquire(held)
    outcome = []

    def waiter():
        try:
            turns.acquire(Turn(), cancelled.is_set)
        except Cancelled:
            outcome.append("cancelled")

    t = threading.Thread(target=waiter)
    t.start()
    _wait_for(lambda: len(turns._waiting) == 1)
    cancelled.set()
    t.join(5)
    assert outcome == ["cancelled"] and not turns._waiting
    turns.release()
    assert turns._holder is None
    with pytest.raises(Cancelled):  # cancelled between two steps as well
        with turns.holding(Turn()):
            turns.step(lambda: True)
    assert turns._holder is None  # and the turn was given back


def test_a_seeded_generation_samples_the_same_numbers_alone_and_beside_others():
    def sample(turns: Turns, seed, n, out):
        with turns.holding(Turn(seed)):
            for _ in range(n):
                out.append(torch.rand(1).item())
                turns.step()

    alone = []
    sample(Turns(), 1234, 20, alone)
    turns, beside, noise, go = Turns(), [], [], threading.Event()

    def noisy():  # another generation drawing from the (global) generator between every step of the seeded one
        with turns.holding(Turn(None)):
            go.wait(5)
            for _ in range(60):
                noise.append(torch.rand(3).sum().item())
                turns.step()

    other = threading.Thread(target=noisy)
    other.start()
    _wait_for(lambda: turns._holder is not None)
    seeded = threading.Thread(target=sample, args=(turns, 1234, 20, beside))
    seeded.start()
    _wait_for(lambda: len(turns._waiting) == 1)
    go.set()
    seeded.join(10)
    other.join(10)
    assert turns.handoffs > 20  # they really interleaved
    assert beside == alone
    unseeded = []
    sample(Turns(), None, 5, unseeded)
    assert unseeded != alone[:5]


def test_the_pool_runs_submitted_generations_concurrently_by_turns_with_the_submitters_seed():
    turns, log = Turns(), []
    seeds = iter([7, None])
    pool = TurnPool(turns, 2, seed_of=lambda: next(seeds))

    def job(name):
        first = torch.rand(1).item()
        for _ in range(5):
            log.append(name)
            turns.step()
        return first

    a = pool.submit(job, "a")
    b = pool.submit(job, "b")
    assert a.result(10) == _first_draw(7)
    b.result(10)
    assert sorted(log) == ["a"] * 5 + ["b"] * 5 and turns._holder is None


def _first_draw(seed):
    torch.manual_seed(seed)
    return torch.rand(1).item()
