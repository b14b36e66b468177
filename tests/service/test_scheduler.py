"""The batcher, driven in plain asyncio with a stand-in engine (no server, no model)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from engines.errors import InferenceError
from service.errors import to_service_error
from service.scheduler import (
    BatchingConfig,
    BatchObserver,
    BatchScheduler,
    DeadlineUnmeetable,
    DecodeBusy,
    DecodeTooCostly,
    DeviceLoad,
    Outputs,
    QueueFull,
    ShuttingDown,
    TooManyImages,
    VariantOutOfService,
)
from service.scheduler.admission import (
    DEADLINE_SAFETY,
    Admission,
    BatchTimes,
    Calibration,
    NullObserver,
    QueueState,
)


class StandInEngine:
    """Echoes each row's id (tensor[0, 0, 0]) so tests can check outputs match inputs."""

    def __init__(self, delay_s: float = 0.0, fail_if: Callable[[np.ndarray], bool] | None = None):
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.fail_if = fail_if
        self.gate = threading.Event()
        self.gate.set()
        self.entered = 0  # batches that reached the engine (held at the gate or not)

    def __call__(self, batch: np.ndarray) -> Outputs:
        self.entered += 1
        self.gate.wait(10)
        ids = [int(v) for v in batch[:, 0, 0, 0]]
        self.batches.append(ids)
        if self.fail_if is not None and self.fail_if(batch):
            raise InferenceError(f"batch {ids} failed")
        time.sleep(self.delay_s)
        return {"ids": batch[:, 0, 0, 0].copy(), "double": batch[:, 0, 0, 0] * 2}


HOUR = 3600.0
NOT_AN_HOUR = 60.0  # far below max_wait, far above any batch on a loaded machine


def item(i: int) -> np.ndarray:
    return np.full((1, 2, 2), i, dtype=np.float32)


def far() -> float:
    return time.monotonic() + 60


def run(coro_fn: Callable[[], object]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


async def until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    """Yield to the loop until ``condition`` holds (instead of sleeping and hoping)."""
    give_up = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up, "condition never held"
        await asyncio.sleep(0.001)


def batching(**overrides: float) -> BatchingConfig:
    """The server's default batching (Settings), with a test's own values."""
    defaults = {"max_batch": 8, "max_wait_s": 0.004, "max_queue": 64, "concurrency": 1}
    return BatchingConfig(**{**defaults, **overrides})  # type: ignore[arg-type]


def make(
    engine: Callable[[np.ndarray], Outputs],
    *,
    observer: BatchObserver | None = None,
    **config: float,
) -> BatchScheduler:
    """A started scheduler over ``engine`` with ``batching(**config)``."""
    sched = BatchScheduler(engine, batching(**config), observer=observer)
    sched.start()
    return sched


async def taught(delay_s: float, **config: float) -> tuple[StandInEngine, BatchScheduler]:
    """A started scheduler that has timed one batch of ``delay_s`` per image."""
    engine = StandInEngine(delay_s=delay_s)
    sched = make(engine, **config)
    await sched.submit(item(0), far())
    return engine, sched


def test_batch_forms_on_size() -> None:
    async def main() -> None:
        engine = StandInEngine()
        sched = make(engine, max_batch=4, max_wait_s=HOUR, max_queue=16)
        with sched.incoming():  # another request is on its way: the batcher may wait
            tasks = [asyncio.create_task(sched.submit(item(i), far())) for i in range(4)]
            # A full batch runs at once: waiting for max_wait would blow this (generous) limit.
            results = await asyncio.wait_for(asyncio.gather(*tasks), NOT_AN_HOUR)
        assert engine.batches == [[0, 1, 2, 3]]
        assert [int(r.outputs["ids"][0]) for r in results] == [0, 1, 2, 3]
        assert all(r.batch_size == 4 for r in results)
        await sched.close()

    run(main)


def test_batch_forms_on_time() -> None:
    async def main() -> None:
        engine = StandInEngine()
        sched = make(engine, max_batch=8, max_wait_s=0.15, max_queue=16)
        started = time.monotonic()
        with sched.incoming():
            results = await asyncio.gather(*(sched.submit(item(i), far()) for i in range(3)))
        waited = time.monotonic() - started
        assert engine.batches == [[0, 1, 2]]
        assert waited >= 0.14
        # Each waited for the window, and no longer than the test itself did.
        assert all(0.14 <= r.queue_wait_s <= waited for r in results)
        await sched.close()

    run(main)


def test_lone_request_does_not_wait_for_batch() -> None:
    async def main() -> None:
        engine = StandInEngine()
        sched = make(engine, max_batch=8, max_wait_s=HOUR, max_queue=16)
        result = await asyncio.wait_for(sched.submit(item(7), far()), NOT_AN_HOUR)
        assert result.batch_size == 1
        await sched.close()

    run(main)


def test_outputs_matched_one_for_one() -> None:
    async def main() -> None:
        engine = StandInEngine(delay_s=0.01)
        sched = make(engine, max_batch=5, max_wait_s=0.01, max_queue=64)
        results = await asyncio.gather(*(sched.submit(item(i), far()) for i in range(23)))
        for i, r in enumerate(results):
            assert int(r.outputs["ids"][0]) == i
            assert int(r.outputs["double"][0]) == 2 * i
            assert r.outputs["ids"].shape == (1,)
        assert sorted(x for b in engine.batches for x in b) == list(range(23))
        assert max(len(b) for b in engine.batches) <= 5
        await sched.close()

    run(main)


def test_unmeetable_deadline_is_refused_before_running() -> None:
    async def main() -> None:
        # teaches the scheduler ~200 ms per image
        engine, sched = await taught(0.2, max_batch=1, max_wait_s=0.0, max_queue=16)
        with pytest.raises(DeadlineUnmeetable):
            await sched.submit(item(1), time.monotonic() + 0.02)
        assert engine.batches == [[0]]  # the refused request never reached the engine
        await sched.close()

    run(main)


def test_deadline_covers_the_time_after_the_batch() -> None:
    async def main() -> None:
        # ~20 ms per image
        engine, sched = await taught(0.02, max_batch=1, max_wait_s=0.0, max_queue=16)
        await sched.submit(item(1), time.monotonic() + 0.2)  # easily met
        sched.observe_finish(0.5)  # but answering takes 500 ms after the engine
        with pytest.raises(DeadlineUnmeetable):
            await sched.submit(item(2), time.monotonic() + 0.2)
        assert [2] not in engine.batches
        await sched.close()

    run(main)


def test_late_request_in_the_middle_of_a_batch_is_dropped_and_the_rest_run() -> None:
    async def main() -> None:
        # ~50 ms per image
        engine, sched = await taught(0.05, max_batch=3, max_wait_s=0.0, max_queue=16)
        engine.gate.clear()
        blocker = asyncio.create_task(sched.submit(item(1), far()))
        await until(lambda: engine.entered == 2)  # item 1 is inside the stalled engine
        first = asyncio.create_task(sched.submit(item(2), far()))
        await asyncio.sleep(0)
        late = asyncio.create_task(sched.submit(item(3), time.monotonic() + 0.25))
        await asyncio.sleep(0)
        last = asyncio.create_task(sched.submit(item(4), far()))
        await asyncio.sleep(0.15)  # item 3 still fits alone, no longer in a batch of three
        engine.gate.set()
        assert int((await first).outputs["ids"][0]) == 2
        assert int((await last).outputs["ids"][0]) == 4
        with pytest.raises(DeadlineUnmeetable):
            await late
        await blocker
        assert engine.batches[-1] == [2, 4]
        await sched.close()

    run(main)


def test_admission_counts_images_still_being_decoded() -> None:
    async def main() -> None:
        _, sched = await taught(0.05, max_batch=4, max_wait_s=0.0, max_queue=4)
        sched.admit(1, far())  # an empty queue admits
        with sched.incoming(3):  # three images of other requests are decoding
            with pytest.raises(QueueFull):
                sched.admit(2, far())  # 3 + 2 > the queue's 4 places
            sched.admit(1, far())
            with pytest.raises(DeadlineUnmeetable):
                sched.admit(1, time.monotonic() + 0.1)  # 4 images of 50 ms ahead
        sched.admit(1, time.monotonic() + 0.1)  # once they are gone, it fits
        with pytest.raises(TooManyImages):
            sched.admit(5, far())  # more than the queue could ever hold: 413, not 503
        await sched.close()

    run(main)


class _ExplodingObserver:
    def queued(self, depth: int) -> None: ...
    def batch_started(self, size: int, queue_waits_s: list[float]) -> None:
        raise RuntimeError("metrics backend broke")

    def batch_finished(self, size: int, duration_s: float, ok: bool) -> None: ...
    def rejected(self, reason: str) -> None: ...


def test_a_crashing_worker_answers_its_batch_and_takes_the_variant_out() -> None:
    async def main() -> None:
        sched = make(StandInEngine(), observer=_ExplodingObserver())
        with pytest.raises(RuntimeError):  # the batch it had taken gets the error, no hang
            await asyncio.wait_for(sched.submit(item(0), far()), 5)
        await asyncio.sleep(0)
        assert sched.dead_reason is not None and "crashed" in sched.dead_reason
        with pytest.raises(VariantOutOfService):  # later requests are refused at once
            await asyncio.wait_for(sched.submit(item(1), far()), 5)
        await sched.close()

    run(main)


@pytest.mark.parametrize("with_callback", [True, False], ids=["on_fatal", "no_on_fatal"])
def test_a_crashing_worker_is_reported_once_and_its_report_never_fails(with_callback: bool) -> None:
    """The registry's ``on_fatal`` hears of the crash exactly once; a scheduler without one
    (tests, tools) crashes no further: nothing else fails inside the worker's done callback."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        callback_errors: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: callback_errors.append(context))
        seen: list[BaseException] = []
        sched = BatchScheduler(
            StandInEngine(),
            batching(),
            observer=_ExplodingObserver(),
            on_fatal=seen.append if with_callback else None,
        )
        sched.start()
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(sched.submit(item(0), far()), 5)
        await until(lambda: sched.dead_reason is not None)
        await asyncio.sleep(0)  # the done callbacks have run
        assert [type(e) for e in seen] == ([RuntimeError] if with_callback else [])
        assert callback_errors == []
        await sched.close()

    run(main)


def test_a_request_estimate_counts_its_own_image() -> None:
    """An idle queue still owes the request its own batch: the estimate a deadline is judged
    against (and that the calibration learns from) is one image's measured cost, not zero."""

    async def main() -> None:
        engine, sched = await taught(0.05)
        lone = await sched.submit(item(1), far())
        # The engine sleeps 50 ms per batch; the estimate is that times a factor of at least 1
        # (the calibration starts at DEADLINE_SAFETY).
        assert lone.estimated_s >= engine.delay_s
        assert lone.estimated_s == pytest.approx(engine.delay_s * DEADLINE_SAFETY, rel=0.5)
        await sched.close()

    run(main)


def test_one_slow_batch_does_not_lock_out_tight_deadlines() -> None:
    async def main() -> None:
        engine = StandInEngine(delay_s=0.01)
        sched = make(engine, max_batch=1, max_wait_s=0.0, max_queue=16)
        for i in range(5):
            await sched.submit(item(i), far())  # ~10 ms per image, steady
        engine.delay_s = 0.25
        await sched.submit(item(5), far())  # one 250 ms outlier: the variance jumps
        engine.delay_s = 0.01
        # On an idle device the tail term is left out, so the estimate can come back down.
        for i in range(6, 12):
            await sched.submit(item(i), time.monotonic() + 0.2)
        assert engine.batches[-1] == [11]
        await sched.close()

    run(main)


def test_builder_timing_decides_deadlines_before_the_first_batch() -> None:
    async def main() -> None:
        engine = StandInEngine()
        sched = BatchScheduler(engine, batching(max_batch=1, expected_per_image_s=0.5))
        sched.start()
        with pytest.raises(DeadlineUnmeetable):  # the manifest says 500 ms per image
            await sched.submit(item(0), time.monotonic() + 0.1)
        assert engine.batches == []
        await sched.submit(item(1), far())
        assert engine.batches == [[1]]
        await sched.close()

    run(main)


def test_deadline_counts_work_of_other_variants_on_the_same_device() -> None:
    async def main() -> None:
        device = DeviceLoad()
        busy_engine, idle_engine = StandInEngine(), StandInEngine()
        config = batching(max_batch=1, max_wait_s=0.0, expected_per_image_s=0.1)
        busy = BatchScheduler(busy_engine, config, device=device, name="fp32")
        idle = BatchScheduler(idle_engine, config, device=device, name="int8")
        busy.start()
        idle.start()
        busy_engine.gate.clear()
        queued = [asyncio.create_task(busy.submit(item(i), far())) for i in range(5)]
        await until(lambda: busy_engine.entered == 1 and busy.queue_depth == 4)  # ~500 ms owed
        alone = BatchScheduler(StandInEngine(), config, name="elsewhere")
        alone.start()
        await alone.submit(item(9), time.monotonic() + 0.3)  # 100 ms of its own: fits
        # Shares the busy device: refused at the door, at once (not later, when its batch
        # finally got the device and found the deadline gone).
        with pytest.raises(DeadlineUnmeetable, match="ms needed"):
            await asyncio.wait_for(idle.submit(item(9), time.monotonic() + 0.3), 2)
        assert idle_engine.entered == 0
        busy_engine.gate.set()
        await asyncio.gather(*queued)
        for sched in (busy, idle, alone):
            await sched.close()

    run(main)


def test_variants_on_one_device_take_turns() -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def engine(batch: np.ndarray) -> Outputs:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return {"ids": batch[:, 0, 0, 0].copy()}

    async def main() -> None:
        device = DeviceLoad(concurrency=1)
        config = batching(max_batch=2, max_wait_s=0.0)
        fp32 = BatchScheduler(engine, config, device=device, name="fp32")
        int8 = BatchScheduler(engine, config, device=device, name="int8")
        fp32.start()
        int8.start()
        work = [s.submit(item(i), far()) for i in range(12) for s in (fp32, int8)]
        results = await asyncio.gather(*work)
        assert sorted(int(r.outputs["ids"][0]) for r in results) == sorted(list(range(12)) * 2)
        await fp32.close()
        await int8.close()

    run(main)
    assert most == 1  # never two batches at once on the shared device


def test_deadline_passing_while_queued_is_refused_before_running() -> None:
    async def main() -> None:
        engine = StandInEngine(delay_s=0.05)
        recorder = _Recorder()
        sched = make(engine, observer=recorder, max_batch=1, max_wait_s=0.0, max_queue=16)
        await sched.submit(item(0), far())
        engine.gate.clear()  # the engine stalls on the next batch
        blocker = asyncio.create_task(sched.submit(item(1), far()))
        await until(lambda: engine.entered == 2)
        late = asyncio.create_task(sched.submit(item(2), time.monotonic() + 0.15))
        await asyncio.sleep(0.3)
        engine.gate.set()
        await blocker
        with pytest.raises(DeadlineUnmeetable):
            await late
        assert [2] not in engine.batches
        assert recorder.rejections == ["deadline"]  # counted, with its reason
        await sched.close()

    run(main)


def test_full_queue_is_refused_with_retry_after() -> None:
    async def main() -> None:
        engine = StandInEngine()
        engine.gate.clear()
        # The builder measured 1.5 s per image (no batch has run here to change that).
        sched = make(engine, max_batch=2, max_wait_s=0.0, max_queue=2, expected_per_image_s=1.5)
        running = asyncio.create_task(sched.submit(item(0), far()))
        await until(lambda: engine.entered == 1)  # item 0 is inside the engine, queue empty
        queued = [asyncio.create_task(sched.submit(item(i), far())) for i in (1, 2)]
        await until(lambda: sched.queue_depth == 2)
        with pytest.raises(QueueFull) as refused:
            await sched.submit(item(3), far())
        # Two queued and one running ahead, then this one: 4 x 1.5 s (less the running one's start).
        assert refused.value.retry_after_s == pytest.approx(
            6.0, abs=0.05
        )  # less what the running batch has done
        assert to_service_error(refused.value).headers["Retry-After"] == "6"
        engine.gate.set()
        await asyncio.gather(running, *queued)  # accepted work still completes
        await sched.close()

    run(main)


def test_raising_engine_fails_only_its_batch() -> None:
    async def main() -> None:
        engine = StandInEngine(fail_if=lambda b: bool((b[:, 0, 0, 0] == 1).any()))
        sched = make(engine, max_batch=2, max_wait_s=0.05, max_queue=16)
        with sched.incoming():
            first = [asyncio.create_task(sched.submit(item(i), far())) for i in (0, 1)]
            outcomes = await asyncio.gather(*first, return_exceptions=True)
        assert all(isinstance(o, InferenceError) for o in outcomes)
        with sched.incoming():
            second = await asyncio.gather(*(sched.submit(item(i), far()) for i in (2, 3)))
        assert [int(r.outputs["ids"][0]) for r in second] == [2, 3]
        assert sched.dead_reason is None
        await sched.close()

    run(main)


def test_fatal_engine_error_takes_variant_out_of_service() -> None:
    async def main() -> None:
        def fatal(_: np.ndarray) -> Outputs:
            raise InferenceError("device lost", fatal=True)

        seen: list[BaseException] = []
        sched = BatchScheduler(fatal, batching(max_batch=1), on_fatal=seen.append)
        sched.start()
        with pytest.raises(InferenceError):
            await sched.submit(item(0), far())
        assert sched.dead_reason and "device lost" in sched.dead_reason
        assert len(seen) == 1
        with pytest.raises(VariantOutOfService):
            await sched.submit(item(1), far())
        await sched.close()

    run(main)


def test_cancelled_requests_never_reach_the_engine() -> None:
    async def main() -> None:
        engine = StandInEngine()
        engine.gate.clear()
        sched = make(engine, max_batch=8, max_wait_s=0.0, max_queue=16)
        running = asyncio.create_task(sched.submit(item(0), far()))
        await until(lambda: engine.entered == 1)
        waiting = {i: asyncio.create_task(sched.submit(item(i), far())) for i in (1, 2, 3, 4)}
        await until(lambda: sched.queue_depth == 4)
        waiting[2].cancel()
        waiting[4].cancel()
        engine.gate.set()
        await running
        await asyncio.gather(waiting[1], waiting[3])
        seen = {x for b in engine.batches for x in b}
        assert seen == {0, 1, 3}
        await sched.close()

    run(main)


def test_wrong_output_count_fails_every_request_of_the_batch() -> None:
    async def main() -> None:
        def short(batch: np.ndarray) -> Outputs:
            return {"ids": batch[:1, 0, 0, 0]}

        sched = BatchScheduler(short, batching(max_batch=3, max_wait_s=0.05))
        sched.start()
        with sched.incoming():
            outcomes = await asyncio.gather(
                *(sched.submit(item(i), far()) for i in range(3)), return_exceptions=True
            )
        assert all(isinstance(o, InferenceError) for o in outcomes)
        await sched.close()

    run(main)


def test_shutdown_drains_every_accepted_request() -> None:
    async def main() -> None:
        engine = StandInEngine(delay_s=0.02)
        sched = make(engine, max_batch=4, max_wait_s=0.005, max_queue=64)
        tasks = [asyncio.create_task(sched.submit(item(i), far())) for i in range(30)]
        await asyncio.sleep(0.01)
        await sched.close(timeout_s=30)
        results = await asyncio.gather(*tasks)
        assert [int(r.outputs["ids"][0]) for r in results] == list(range(30))
        with pytest.raises(ShuttingDown):
            await sched.submit(item(99), far())

    run(main)


def test_scheduler_refusals_map_to_http_in_one_place() -> None:
    """The scheduler speaks in its own terms; service/errors.py picks the status and headers."""
    cases = [
        (QueueFull("full", retry_after_s=2.5), 503, "3"),
        (ShuttingDown("closing"), 503, "5"),
        (TooManyImages("too many"), 413, None),
        (DeadlineUnmeetable("late", retry_after_s=1.2), 504, "2"),
        (VariantOutOfService("dead"), 503, "5"),
        (DecodeBusy("busy", retry_after_s=0.1), 503, "1"),
        (DecodeTooCostly("huge"), 413, None),
    ]
    for error, status, retry_after in cases:
        mapped = to_service_error(error)
        assert (mapped.status, mapped.headers.get("Retry-After")) == (status, retry_after)
        assert mapped.message == str(error)
    # The server's own default deadline missed is overload (503), not the client's 504.
    server_set = to_service_error(
        DeadlineUnmeetable("late", retry_after_s=3), client_deadline=False
    )
    assert (server_set.status, server_set.headers["Retry-After"]) == (503, "3")


def test_queue_estimates_price_whole_batches() -> None:
    times = BatchTimes()
    times.observe(8, 0.4)  # 50 ms per image in a full batch
    assert times.per_image_s == pytest.approx(0.05)
    assert times.estimate(3) == pytest.approx(0.15)  # per image, times the images
    times.observe(1, 0.1)  # but a lone image pays the fixed cost: 100 ms
    assert times.queue_s(9, max_batch=8) == pytest.approx(0.5)  # one full batch, then one
    assert times.queue_s(3, max_batch=8) == pytest.approx(3 * times.per_image_s)  # not seen yet


def test_calibration_learns_how_late_estimates_run() -> None:
    calibration = Calibration()
    assert calibration.factor == DEADLINE_SAFETY  # nothing measured yet
    for i in range(100):  # answers take 1.5x the estimate, one in five 3x
        calibration.observe(1.0, 3.0 if i % 5 == 0 else 1.5)
    assert calibration.factor == 1.5  # the median: outliers do not make the door pessimistic
    assert calibration.tail_factor == 3.0  # the 90th percentile, for a batch about to run
    for _ in range(256):  # then the estimate turns out pessimistic
        calibration.observe(1.0, 0.8)
    assert calibration.factor == 0.8
    for _ in range(256):  # a stretch of absurd measurements is bounded
        calibration.observe(1.0, 100.0)
    assert calibration.factor == 4.0
    assert calibration.samples == 256  # only the most recent answers are remembered


class _Recorder:
    def __init__(self) -> None:
        self.rejections: list[str] = []
        self.finished: list[tuple[int, bool]] = []

    def queued(self, depth: int) -> None: ...
    def batch_started(self, size: int, queue_waits_s: list[float]) -> None: ...
    def batch_finished(self, size: int, duration_s: float, ok: bool) -> None:
        assert 0 <= duration_s < NOT_AN_HOUR  # an engine time, failed batches included
        self.finished.append((size, ok))

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)


def test_every_refusal_is_reported_with_its_reason() -> None:
    async def main() -> None:
        recorder, device = _Recorder(), DeviceLoad()
        config = batching(max_batch=1, max_queue=1, expected_per_image_s=0.5)
        sched = BatchScheduler(StandInEngine(), config, observer=recorder, device=device)
        assert sched.device is device
        sched.start()
        with pytest.raises(DeadlineUnmeetable):
            sched.admit(1, time.monotonic() + 0.1)
        with sched.incoming(1), pytest.raises(QueueFull):
            sched.admit(1, far())
        await sched.close()
        with pytest.raises(ShuttingDown):
            sched.admit(1, far())
        assert recorder.rejections == ["deadline", "queue_full", "shutting_down"]

    run(main)


def test_nothing_is_refused_on_deadline_grounds_before_any_timing() -> None:
    async def main() -> None:
        sched = make(StandInEngine(), max_batch=1)  # no builder timing, no batch run yet
        sched.admit(1, time.monotonic() - 1)  # even a deadline already past is let through
        await sched.close()

    run(main)


def test_failed_batches_are_reported_as_failed() -> None:
    async def main() -> None:
        recorder = _Recorder()
        engine = StandInEngine(fail_if=lambda b: bool((b[:, 0, 0, 0] == 1).any()))
        sched = make(engine, observer=recorder, max_batch=1)
        await sched.submit(item(0), far())
        with pytest.raises(InferenceError):
            await sched.submit(item(1), far())
        await sched.close()
        assert recorder.finished == [(1, True), (1, False)]  # its time is still accounted

    run(main)


def test_the_device_is_idle_only_with_no_batch_running_and_nothing_waiting() -> None:
    """Background work (the precision audit's shadow runs) may take the device only then: a
    held slot with nothing queued is busy, and so is a queued image whose batch has not yet
    taken the slot."""

    async def main() -> None:
        device = DeviceLoad(concurrency=1)
        engine = StandInEngine()
        sched = BatchScheduler(
            engine, batching(max_batch=1, max_wait_s=0.0), device=device, name="fp32"
        )
        assert device.idle()
        async with device.slot():  # e.g. a shadow run: nothing queued anywhere
            assert not device.idle()
        assert device.idle()
        queued = asyncio.create_task(sched.submit(item(7), far()))  # no worker yet: it waits
        await until(lambda: sched.queue_depth == 1)
        assert not device.idle()
        sched.start()
        assert int((await queued).outputs["ids"][0]) == 7
        await until(device.idle)
        await sched.close()

    run(main)


def test_one_slow_batch_moves_the_running_cost_a_fifth_of_the_way() -> None:
    """Deadlines and ``Retry-After`` follow a running average: one outlier does not swing them."""
    times = BatchTimes()
    times.observe(1, 1.0)
    times.observe(1, 2.0)
    times.observe(1, 2.0)
    assert times.estimate(1) == pytest.approx(1.0 + 0.2 * 1.0 + 0.2 * 0.8)
    # The same for the cost kept per batch size (what a running batch's remaining time uses).
    assert times.batch_s(1) == pytest.approx(times.estimate(1))


def test_a_refused_deadline_says_when_the_same_budget_would_suffice() -> None:
    """Four images' work (1 s each) before a 1 s budget: refused, with a retry time equal to the
    time needed minus the time the request had left."""
    admission = Admission(
        max_queue=16, workers=1, expected_per_image_s=1.0, observer=NullObserver(), max_batch=1
    )
    state = QueueState(
        ahead=3, running=0, running_left_s=0.0, others_s=0.0, dead=None, closing=False
    )
    needed_s = 4 * 1.0 * DEADLINE_SAFETY  # nothing measured yet: the safety factor applies
    with pytest.raises(DeadlineUnmeetable, match=r"ms needed, \d+ ms left") as refused:
        admission.check(1, time.monotonic() + 1.0, state)
    assert refused.value.retry_after_s == pytest.approx(needed_s - 1.0, abs=0.05)
    admission.check(1, time.monotonic() + needed_s + 1.0, state)  # a budget that suffices
    # A deadline already past has nothing left: come back when all of it is done.
    with pytest.raises(DeadlineUnmeetable, match=r" 0 ms left") as late:
        admission.check(1, time.monotonic() - 5.0, state)
    assert late.value.retry_after_s == pytest.approx(needed_s, abs=0.05)


def test_a_closed_scheduler_leaves_no_engine_thread_behind() -> None:
    """Unloading a model closes its schedulers: their engine threads end (a load/unload cycle
    must not leak one each), while an executor the caller lent is left running."""

    def threads(prefix: str) -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith(prefix)]

    async def main() -> None:
        sched = BatchScheduler(StandInEngine(), batching(), name="leak-check")
        sched.start()
        await sched.submit(item(1), far())
        assert threads("leak-check")
        await sched.close()
        assert sched.dead_reason is None  # a clean close is no crash
        await until(lambda: not threads("leak-check"))
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lent") as lent:
            borrower = BatchScheduler(StandInEngine(), batching(), executor=lent)
            borrower.start()
            await borrower.submit(item(2), far())
            await borrower.close()
            assert lent.submit(lambda: 3).result(timeout=10) == 3  # still usable

    run(main)


def test_calibration_factors_are_the_exact_median_and_90th_percentile_ranks() -> None:
    """16 distinct ratios 1.0 .. 2.5, seen out of order: the median rank (7 of 0..15) is 1.7 and
    the 90th percentile rank (13) is 2.3; a quantile one rank off reads a different ratio."""
    ratios = [1.0 + i / 10 for i in range(16)]
    calibration = Calibration()
    for i in (5, 12, 0, 9, 15, 3, 7, 11, 1, 14, 6, 10, 2, 13, 4, 8):
        calibration.observe(1.0, ratios[i])
    assert calibration.factor == pytest.approx(1.7)
    assert calibration.tail_factor == pytest.approx(2.3)


def test_calibration_is_current_after_every_answer() -> None:
    """16 answers on time, then late ones: the median turns late at the first answer that makes
    late the majority (17 of 33), not some answers later."""
    calibration = Calibration()
    for _ in range(16):
        calibration.observe(2.0, 2.0)  # the ratio, not either time, is what is learnt
    for _ in range(16):
        calibration.observe(2.0, 6.0)
        assert calibration.factor == 1.0
    calibration.observe(2.0, 6.0)
    assert calibration.factor == 3.0
    assert calibration.samples == 33


def test_the_queue_depth_is_reported_as_requests_arrive_and_leave() -> None:
    """What ``detect_queue_depth`` shows: one more for each request queued behind a busy engine,
    and zero once a batch has taken them."""

    class Depths(_Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.depths: list[int] = []

        def queued(self, depth: int) -> None:
            self.depths.append(depth)

    async def main() -> None:
        engine = StandInEngine()
        observer = Depths()
        sched = make(engine, observer=observer, max_batch=4, max_wait_s=0.0)
        engine.gate.clear()
        first = asyncio.create_task(sched.submit(item(0), far()))
        await until(lambda: engine.entered == 1)  # its batch holds the engine
        waiting = [asyncio.create_task(sched.submit(item(i), far())) for i in (1, 2, 3)]
        await until(lambda: observer.depths[-3:] == [1, 2, 3])
        engine.gate.set()
        await asyncio.gather(first, *waiting)
        assert observer.depths[-1] == 0
        await sched.close()

    run(main)


def test_a_deadline_met_exactly_is_not_missed() -> None:
    assert not Admission.misses(deadline=10.0, needed_s=2.0, now=8.0)
    assert Admission.misses(deadline=10.0, needed_s=2.0, now=8.5)


def test_close_never_waits_on_an_engine_call_stuck_past_its_timeout() -> None:
    """A drain with a time limit returns at that limit even while the engine thread is still
    inside a batch (a hung device): the executor is shut down without waiting for it."""

    async def main() -> None:
        engine = StandInEngine()
        engine.gate.clear()
        sched = make(engine, max_batch=1, max_wait_s=0.0)
        stuck = asyncio.create_task(sched.submit(item(0), far()))
        await until(lambda: engine.entered == 1)
        behind = asyncio.create_task(sched.submit(item(1), far()))  # queued behind it
        await until(lambda: sched.queue_depth == 1)
        released = threading.Timer(5.0, engine.gate.set)  # the device comes back, much later
        released.start()
        await sched.close(timeout_s=0.1)
        assert not engine.gate.is_set()  # close returned while the engine call was still stuck
        assert not sched.busy  # its worker has unwound: nothing counted as running or queued
        released.cancel()
        engine.gate.set()
        done = await asyncio.gather(stuck, behind, return_exceptions=True)
        assert isinstance(done[0], Exception)  # the stuck batch was answered, with an error
        assert isinstance(done[1], ShuttingDown)  # and the queued request told to go elsewhere

    run(main)


def test_a_crashing_worker_fails_every_request_still_queued() -> None:
    """Requests waiting behind the batch that crashed the worker are answered at once (the
    variant is out of service), not left waiting for a worker that is gone."""

    async def main() -> None:
        sched = make(StandInEngine(), observer=_ExplodingObserver(), max_batch=1)
        answers = await asyncio.wait_for(
            asyncio.gather(
                *(sched.submit(item(i), far()) for i in range(3)), return_exceptions=True
            ),
            10,
        )
        assert isinstance(answers[0], RuntimeError)  # the batch that crashed the worker
        assert all(isinstance(a, VariantOutOfService) for a in answers[1:]), answers
        assert sched.queue_depth == 0
        await sched.close()

    run(main)


def test_work_running_on_several_workers_is_owed_once_per_worker() -> None:
    """Two batches of 1 s each running side by side (two workers) owe about 1 s, not 2."""

    async def main() -> None:
        engine = StandInEngine()
        engine.gate.clear()
        sched = make(engine, max_batch=1, max_wait_s=0.0, concurrency=2, expected_per_image_s=1.0)
        running = [asyncio.create_task(sched.submit(item(i), far())) for i in range(2)]
        await until(lambda: engine.entered == 2)
        assert sched.pending_work_s() == pytest.approx(1.0, abs=0.3)
        engine.gate.set()
        await asyncio.gather(*running)
        await sched.close()

    run(main)


def test_the_door_judges_by_the_median_and_a_batch_about_to_run_by_the_tail() -> None:
    admission = Admission(
        max_queue=16, workers=1, expected_per_image_s=1.0, observer=NullObserver(), max_batch=1
    )
    for i in range(100):  # answers take 1.5x the estimate, one in five 3x
        admission.calibration.observe(1.0, 3.0 if i % 5 == 0 else 1.5)
    assert admission.needed_s(1) == pytest.approx(1.5)  # the door: more likely on time than not
    assert admission.needed_s(1, tail=True) == pytest.approx(3.0)  # a batch: all but sure


def test_every_answered_image_teaches_the_calibration() -> None:
    async def main() -> None:
        _engine, sched = await taught(0.01)
        for i in range(20):
            await sched.submit(item(i), far())
        # The teaching image had no estimate to compare with (nothing timed before it).
        assert sched._admission.calibration.samples == 20
        # Answers about as late as estimated: the factor is learnt, far from its 4x bound.
        assert sched._admission.calibration.factor < 4.0
        await sched.close()

    run(main)


def test_an_answer_that_leaves_the_window_leaves_the_factors() -> None:
    """The oldest ratio, not another one, is what leaves the calibration's sorted window: one
    slow answer (4x) from long ago stops counting once 16 newer ones have come in."""
    calibration = Calibration(window=16)
    calibration.observe(1.0, 4.0)
    for _ in range(15):
        calibration.observe(1.0, 1.0)
    for _ in range(8):
        calibration.observe(1.0, 2.0)
    assert calibration.samples == 16
    assert calibration.factor == 1.0  # eight 1.0 and eight 2.0: the lower median
