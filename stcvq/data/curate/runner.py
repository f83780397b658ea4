"""Per-video work in a process pool, in input order, with a progress bar.

A stage is a function ``measure(row, config) -> row`` applied to every kept row of the
manifest; ``crop`` returns a list instead (one row per face track), which takes the input row's
place. Rows already dropped pass through untouched. Any exception from one video becomes
that video's ``reason`` (``unreadable: ...`` for a :class:`~stcvq.media.video.VideoError`,
``error: <type>: ...`` otherwise); the other videos are not affected.

Workers are started with ``spawn`` (no dlib/onnxruntime state inherited through fork) and
each limits its own math libraries to ``threads`` threads so ``workers`` x ``threads`` never
oversubscribes the machine. Results come back in input order, so the output does not depend
on scheduling.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import multiprocessing
import os
from typing import Any, Callable, Sequence

from tqdm import tqdm

from stcvq.data.curate.manifest import Row, drop
from stcvq.media.video import VideoError

log = logging.getLogger(__name__)

Measure = Callable[[Row, Any], "Row | list[Row]"]


def limit_threads(threads: int) -> None:
    """Cap OpenCV/BLAS/onnxruntime threads in this process (call before heavy imports run)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["STCVQ_THREADS"] = str(threads)
    import cv2

    cv2.setNumThreads(threads)


def _init_worker(threads: int, level: int) -> None:
    """Pool initializer: thread caps, and logging like the parent's (spawned workers start bare)."""
    limit_threads(threads)
    logging.basicConfig(level=level, format="%(asctime)s worker %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def worker_threads() -> int:
    """Threads a worker may use (set by :func:`limit_threads`; 1 when unset)."""
    return max(1, int(os.environ.get("STCVQ_THREADS", "1")))


def _safe(measure: Measure, stage: str, config: Any, row: Row) -> list[Row]:
    if not row["keep"]:
        return [row]
    try:
        out = measure(row, config)
        return out if isinstance(out, list) else [out]
    except VideoError as err:
        message = str(err)
        # VideoError messages read "<file>: unreadable: <why>"; keep the part after the file
        detail = message.split(": ", 1)[1] if ": " in message else message
        if not detail.startswith("unreadable"):
            detail = f"unreadable: {detail}"
        log.warning("%s: %s dropped: %s", stage, row["video_id"], message)
        return [drop(row, detail, stage)]
    except Exception as err:  # noqa: BLE001 - one bad video must not stop the others
        log.exception("%s: %s failed", stage, row["video_id"])
        return [drop(row, f"error: {type(err).__name__}: {err}", stage)]


def run_stage(stage: str, measure: Measure, rows: Sequence[Row], config: Any, workers: int = 1) -> list[Row]:
    """``measure`` applied to the kept ``rows`` with ``workers`` processes; same order out (the
    rows a measure returns for one input row stand where that row stood)."""
    todo = sum(1 for r in rows if r["keep"])
    work = functools.partial(_safe, measure, stage, config)
    cpus = os.cpu_count() or 1
    workers = max(1, min(workers, todo)) if todo else 1
    threads = max(1, cpus // workers)
    log.info("%s: %d of %d videos to measure with %d worker(s) x %d thread(s)",
             stage, todo, len(rows), workers, threads)
    bar = tqdm(total=len(rows), desc=stage, unit="video", disable=None)
    try:
        if workers == 1:
            limit_threads(threads)
            out = []
            for row in rows:
                out.append(work(row))
                bar.update()
        else:
            out = _run_pool(stage, work, rows, workers, threads, bar)
    finally:
        bar.close()
    for before, after in zip(rows, out):
        if before["keep"]:
            for row in after:
                log.info("%s: %s %s", stage, row["video_id"], "kept" if row["keep"] else f"dropped: {row['reason']}")
    return [row for after in out for row in after]


def _run_pool(
    stage: str, work: Callable[[Row], list[Row]], rows: Sequence[Row], workers: int, threads: int, bar: tqdm
) -> list[list[Row]]:
    """Rows through a spawn pool, results placed by input index (order never depends on timing).

    A worker that dies (a crash inside a native decoder, the OOM killer) breaks the whole pool;
    the unfinished rows are then retried one per fresh single-worker pool, so only the video
    that kills its worker is dropped (``error: worker process died``).
    """
    ctx = multiprocessing.get_context("spawn")
    results: list[list[Row] | None] = [None] * len(rows)

    def pool(n: int) -> concurrent.futures.ProcessPoolExecutor:
        level = logging.getLogger().getEffectiveLevel()
        return concurrent.futures.ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker,
                                                      initargs=(threads, level))

    try:
        with pool(workers) as executor:
            futures = {executor.submit(work, row): i for i, row in enumerate(rows)}
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    except concurrent.futures.process.BrokenProcessPool:
        left = [i for i, r in enumerate(results) if r is None]
        log.error("%s: a worker process died; retrying %d unfinished video(s) one at a time", stage, len(left))
        for i in left:
            try:
                with pool(1) as executor:
                    results[i] = executor.submit(work, rows[i]).result()
            except concurrent.futures.process.BrokenProcessPool:
                log.error("%s: %s killed its worker process", stage, rows[i]["video_id"])
                results[i] = [drop(rows[i], "error: worker process died", stage)]
            bar.update()
    return [r for r in results if r is not None]
