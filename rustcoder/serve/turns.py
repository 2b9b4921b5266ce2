"""Fair sharing of one model among concurrent generations: each generation runs on a thread of its own and holds
the model's *turn* for one decoding step at a time, handed on in arrival order (round robin, token by token).

transformers serve runs every ``model.generate`` on one inference thread, so a long answer held the model until it
ended and every request behind it waited. With ``Turns`` the transformers engine runs up to N generations at once
(``rustcoder serve --max-concurrent``); only one of them computes at any moment (no oversubscribed cores, the same
throughput), and each gets 1/k of the steps while k are running. A generation's random numbers are its own: its
RNG state is swapped in with its turn, so a seeded request samples the same answer alone or beside others.

Written here because no dependency schedules ``generate`` calls this way (transformers' continuous batching shares
one sampling configuration among all requests: docs/serve.md).
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
from typing import Callable


class Cancelled(Exception):
    """The generation was cancelled while it waited for its turn."""


class Turn:
    """One generation's place in the rotation and its own random state (saved while others hold the model)."""

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self.seeded = False  # its RNG was seeded (at its first step)
        self.rng = None  # (cpu state, cuda states) while another generation holds the model


def _rng_state():
    import torch

    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)


def _set_rng_state(state) -> None:
    import torch

    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


class Turns:
    """Who computes now: one holder at a time, the others waiting in arrival order (FIFO)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._waiting: collections.deque[Turn] = collections.deque()
        self._holder: Turn | None = None
        self._local = threading.local()
        self.handoffs = 0  # turns handed from one generation to another (for tests and figures)

    @property
    def current(self) -> Turn | None:
        """The turn this thread holds, if any."""
        return getattr(self._local, "turn", None)

    def acquire(self, turn: Turn, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Wait (in arrival order) until TURN holds the model; raises Cancelled when ``cancelled()`` becomes true
        first. Restores TURN's random state."""
        with self._cond:
            self._waiting.append(turn)
            try:
                while self._holder is not None or self._waiting[0] is not turn:
                    if cancelled():
                        raise Cancelled()
                    self._cond.wait(0.05)
            except BaseException:
                self._waiting.remove(turn)
                self._cond.notify_all()
                raise
            self._waiting.popleft()
            self._holder = turn
        self._local.turn = turn
        if turn.rng is not None:
            _set_rng_state(turn.rng)
            turn.rng = None
        elif not turn.seeded:  # its first turn: its own random stream
            turn.seeded = True
            import torch

            if turn.seed is not None:
                torch.manual_seed(turn.seed)
            else:
                torch.seed()  # fresh: not the stream the previous generation left behind

    def release(self) -> None:
        """Give up this thread's turn (saving its random state), if it holds one."""
        turn = self.current
        if turn is None:
            return
        turn.rng = _rng_state()
        self._local.turn = None
        with self._cond:
            if self._holder is turn:
                self._holder = None
            self._cond.notify_all()

    def step(self, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Between two decoding steps of this thread's generation: hand the model to the next waiting generation,
        if any, then wait for the turn to come back."""
        turn = self.current
        if turn is None:
            return
        if cancelled():
            raise Cancelled()
        with self._cond:
            others = bool(self._waiting)
        if others:
            self.handoffs += 1
            self.release()
            self.acquire(turn, cancelled)

    @contextlib.contextmanager
    def holding(self, turn: Turn):
        """Hold TURN for the block (a generation's whole run, with ``step`` handing it on between tokens)."""
        self.acquire(turn)
        try:
            yield turn
        finally:
            self.release()


class TurnPool:
    """N threads that run generations, each holding a turn of ``turns`` while it runs: a drop-in for transformers
    serve's one ``InferenceThread`` (``submit`` / ``async_submit``)."""

    def __init__(self, turns: Turns, threads: int, seed_of: Callable[[], int | None] = lambda: None):
        self.turns = turns
        self.seed_of = seed_of  # called where a generation is submitted (the request's context): its seed
        self._queue: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._run, name=f"rustcoder-generate-{i}", daemon=True)
                         for i in range(max(1, threads))]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while True:
            fn, args, kwargs, future, loop, turn = self._queue.get()
            try:
                with self.turns.holding(turn):
                    result = fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the waiting request
                outcome = (future.set_exception, e)
            else:
                outcome = (future.set_result, result)
            if loop is not None:
                loop.call_soon_threadsafe(_settle, future, *outcome)
            else:
                _settle(future, *outcome)
            fn = args = kwargs = outcome = turn = None  # release the model's references before waiting again

    def submit(self, fn, *args, **kwargs):
        """Run fn on a generation thread; a concurrent.futures.Future of its result."""
        import concurrent.futures

        future = concurrent.futures.Future()
        self._queue.put((fn, args, kwargs, future, None, Turn(self.seed_of())))
        return future

    def async_submit(self, fn, *args, **kwargs):
        """Run fn on a generation thread; an awaitable asyncio future of its result."""
        import asyncio

        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((fn, args, kwargs, future, loop, Turn(self.seed_of())))
        return future


def _settle(future, setter, value) -> None:
    if not future.done():
        setter(value)
