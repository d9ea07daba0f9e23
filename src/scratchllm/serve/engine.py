"""The continuous-batching scheduler: one thread owns the model and decodes every request together.

Between two decode steps the engine drops sequences whose client went away, prefills new
ones into free slots (each prompt on its own) and then runs one batched forward pass over
all slots (``scratchllm.serve.slots``). A finished sequence leaves at once and its slot takes
the next waiting request, so a short request never waits for a long one to finish. Requests
that find every slot busy wait in a bounded queue; when that is full ``submit`` refuses
(the server answers 429).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Collection

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.generate.sampling import sample_next_token
from scratchllm.serve.sequence import Event, Failed, Job, SequenceState
from scratchllm.serve.slots import copy_cache, decode_step, new_sequence_cache, prefill


class QueueFullError(ScratchLLMError):
    """Every slot is busy and the waiting queue holds ``max_queue`` requests."""


class EngineClosedError(ScratchLLMError):
    """The engine is shutting down and takes no new requests."""


class _Waiting:
    """A submitted job and the choices of it not started yet."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.next_index = 0
        self.prefilled: dict[int, tuple[object, torch.Tensor, int]] = {}


class Engine:
    """Run ``model`` for many requests at once in a background thread.

    ``max_batch`` slots decode together (the batch width); ``max_queue`` requests may wait
    for a slot. ``eos_ids`` end a sequence (every end id of the model directory).
    """

    def __init__(self, model: nn.Module, tokenizer: object, eos_ids: Collection[int] = (), *,
                 max_batch: int = 8, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be >= 1 and max_queue >= 0")
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = tuple(eos_ids)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.context_length: int = model.config.context_length
        self.vocab_size: int = model.config.vocab_size
        self._slots: list[SequenceState | None] = [None] * max_batch
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._active = 0
        self._thread = threading.Thread(target=self._run, name="scratchllm-engine", daemon=True)
        self.steps = 0  # decode steps run (for tests and the benchmark)

    # ----------------------------------------------------------------- other threads
    def start(self) -> "Engine":
        """Start the engine thread (once; later calls do nothing)."""
        with self._cond:
            if not self._thread.is_alive() and not self._closing:
                self._thread.start()
        return self

    def submit(self, job: Job) -> None:
        """Queue ``job``; its events go to ``job.emit``. Refuses when the queue is full."""
        with self._cond:
            if self._closing:
                raise EngineClosedError("the server is shutting down; retry on another instance")
            if len(self._waiting) >= self.max_queue + self._free_slots_locked():
                raise QueueFullError(
                    f"all {self.max_batch} slots are busy and {len(self._waiting)} requests "
                    f"are waiting (--max-queue {self.max_queue}); retry shortly")
            self._waiting.append(_Waiting(job))
            self._cond.notify()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"active": self._active, "queued": len(self._waiting),
                    "max_batch": self.max_batch, "max_queue": self.max_queue}

    def wake(self) -> None:
        """Make the engine look at cancelled jobs now (it sleeps while there is no work)."""
        with self._cond:
            self._cond.notify()

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the thread; requests still waiting or running fail with a clear message."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _free_slots_locked(self) -> int:
        return self.max_batch - self._active

    # ----------------------------------------------------------------- engine thread
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._closing and not self._waiting and not self._active:
                        self._cond.wait()
                    if self._closing:
                        break
                self._drop_cancelled()
                self._admit()
                if self._active:
                    self._step()
        self._fail_everything("the server shut down before this request finished")

    def _emit(self, job: Job, events: list[Event]) -> None:
        for event in events:
            try:
                job.emit(event)
            except Exception:  # the receiving side is gone (event loop closed)
                job.cancel()
                return

    def _set_slot(self, slot: int, state: SequenceState | None) -> None:
        with self._cond:
            self._active += (state is not None) - (self._slots[slot] is not None)
            self._slots[slot] = state

    def _drop_cancelled(self) -> None:
        for slot, state in enumerate(self._slots):
            if state is not None and state.job.cancelled:
                self._set_slot(slot, None)
        with self._cond:
            self._waiting = collections.deque(w for w in self._waiting if not w.job.cancelled)

    def _admit(self) -> None:
        """Prefill waiting choices into free slots, oldest request first."""
        for slot in range(self.max_batch):
            if self._slots[slot] is not None:
                continue
            with self._cond:
                if not self._waiting:
                    return
                waiting = self._waiting[0]
                index = waiting.next_index
                waiting.next_index += 1
                if waiting.next_index >= waiting.job.n_sequences:
                    self._waiting.popleft()
            try:
                self._start(slot, waiting, index)
            except Exception as err:  # noqa: BLE001 - a bad request must not stop the server
                self._fail_job(waiting, f"generation failed: {type(err).__name__}: {err}")

    def _start(self, slot: int, waiting: _Waiting, index: int) -> None:
        """Prefill (or copy the prefill of an earlier choice of the same prompt) and pick
        the first token."""
        job = waiting.job
        if job.cancelled:
            return
        prompt_index = index // job.n
        prompt = job.prompts[prompt_index]
        capacity = len(prompt) + job.max_tokens[prompt_index]
        shared = waiting.prefilled.get(prompt_index)
        if shared is None:
            cache = new_sequence_cache(self.model, capacity)
            logits = prefill(self.model, prompt, cache)
            left = job.n - 1 - index % job.n
            if left:  # the untouched original stays for the other choices
                waiting.prefilled[prompt_index] = (cache, logits, left)
                cache = copy_cache(cache)
        else:
            cache, logits, left = shared
            if left > 1:
                waiting.prefilled[prompt_index] = (cache, logits, left - 1)
                cache = copy_cache(cache)
            else:
                del waiting.prefilled[prompt_index]  # the last choice takes the original
        if job.cancelled:  # the client left during the prefill: take no slot, run no step
            return
        state = SequenceState(job, index, cache, self.tokenizer, self.eos_ids)
        self._set_slot(slot, state)
        self._advance(slot, state, logits, None)

    def _step(self) -> None:
        """One batched forward pass over every slot, then each row's token."""
        states = list(self._slots)
        try:
            logits = decode_step(self.model, [s.last_token if s else None for s in states],
                                 [s.cache if s else None for s in states]).float()
        except Exception as err:  # noqa: BLE001
            for slot, state in enumerate(states):
                if state is not None:
                    self._emit(state.job, [Failed(f"generation failed: {type(err).__name__}: "
                                                  f"{err}")])
                    self._set_slot(slot, None)
            return
        self.steps += 1
        greedy = sample_next_token(logits).tolist()  # temperature 0: the greedy pick
        for slot, state in enumerate(states):
            if state is not None:
                self._advance(slot, state, logits[slot], greedy[slot])

    def _advance(self, slot: int, state: SequenceState, logits: torch.Tensor,
                 greedy: int | None) -> None:
        token = state.pick(logits, greedy)
        self._emit(state.job, state.accept(token, logits))
        if state.done:
            self._set_slot(slot, None)

    def _fail_job(self, waiting: _Waiting, message: str) -> None:
        waiting.job.cancel()
        with self._cond:
            if waiting in self._waiting:
                self._waiting.remove(waiting)
        for slot, state in enumerate(self._slots):
            if state is not None and state.job is waiting.job:
                self._set_slot(slot, None)
        self._emit(waiting.job, [Failed(message)])

    def _fail_everything(self, message: str) -> None:
        jobs = {id(s.job): s.job for s in self._slots if s is not None}
        with self._cond:
            jobs.update({id(w.job): w.job for w in self._waiting})
            self._waiting.clear()
        for slot in range(self.max_batch):
            self._set_slot(slot, None)
        for job in jobs.values():
            self._emit(job, [Failed(message)])
