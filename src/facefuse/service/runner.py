"""Running one job: read its inputs from storage, swap, write a labelled output under a server key.

`process_job` (claim, then `run_job`) is what any worker calls: the embedded LocalQueue's threads, or
a Celery task in the scale-out setup. Video jobs go through facefuse.video with its segments in a
per-job work folder, so a job re-run after its worker died resumes from the finished segments and
produces the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facefuse.analysis.select import Order, order_faces
from facefuse.errors import FacefuseError, InputInvalid
from facefuse.pipeline import Pipeline, Timings, check_result
from facefuse.service.jobs import Job, JobKind, JobStatus, JobStore
from facefuse.service.options import JobOptions
from facefuse.service.storage import Storage

log = logging.getLogger("facefuse.service")

ProgressFn = Callable[[str, int, int], None]  # (stage, frames done, frames total)
PROGRESS_WRITE_INTERVAL_S = 0.3
CANCEL_CHECK_INTERVAL_S = 0.3
OUTPUT_MIME = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4"}


class JobCancelled(Exception):
    """Raised inside a running job when its owner cancelled it; the worker stops and cleans up."""


@dataclass
class Worker:
    """What one worker loads once, at start-up: the models (a Pipeline) and its C2PA signer."""

    pipeline: Pipeline
    work_root: Path  # local folder for outputs being written and video segments (resume state)
    result_ttl_s: float = 24 * 3600.0
    max_pixels: int = 40_000_000
    max_video_frames: int = 18_000
    video_workers: int = 1
    # Frames per video segment (0: automatic), the unit a resumed job keeps. It is part of the resume
    # manifest, so every worker that may take over a job must use the same value.
    segment_frames: int = 0
    signer: Any = None
    id: str = "worker"
    extra: dict[str, Any] = field(default_factory=dict)
    models_dir: Path | None = None  # learned models (None: the default folder)
    verify_models: bool = True
    model_threads: int | None = None  # onnxruntime threads per session (None: its default)
    pipelines: Any = None  # service.capabilities.Pipelines, made on first use

    def pipeline_for(self, options: JobOptions) -> Pipeline:
        """The built-in Pipeline, or the one for the job's learned models (built once per choice)."""
        if self.pipelines is None:
            from facefuse.service.capabilities import Pipelines

            self.pipelines = Pipelines(
                self.pipeline,
                models_dir=self.models_dir,
                verify=self.verify_models,
                threads=self.model_threads,
                max_pixels=self.max_pixels,
            )
        return self.pipelines.get(options)

    @classmethod
    def load(cls, work_root: Path, *, worker_id: str = "worker", **kwargs: Any) -> Worker:
        from facefuse.analysis import DetectorSettings
        from facefuse.media.labels import SigningIdentity

        max_pixels = kwargs.get("max_pixels", 40_000_000)
        pipeline = Pipeline(detector=DetectorSettings(), max_pixels=max_pixels)
        signer = SigningIdentity.load_or_create().signer()
        Path(work_root).mkdir(parents=True, exist_ok=True)
        return cls(pipeline=pipeline, work_root=Path(work_root), signer=signer, id=worker_id, **kwargs)

    def close(self) -> None:
        if self.signer is not None:
            with contextlib.suppress(Exception):
                self.signer.close()
            self.signer = None


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}"


def input_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/in"


def output_key(job_id: str, fmt: str) -> str:
    return f"jobs/{job_id}/result.{fmt}"


def output_format_for(job: Job) -> str:
    fmt = job.options.get("output_format")
    if fmt:
        return fmt
    if job.kind is JobKind.VIDEO:
        return "mp4"
    target = job.inputs.get("target", "")
    return "jpg" if target.endswith(".jpg") else "png"


def process_job(
    job_id: str,
    worker: Worker,
    storage: Storage,
    store: JobStore,
    is_cancelled: Callable[[], bool] | None = None,
) -> Job | None:
    """Claim a queued job and run it. None when another worker has it or it was cancelled first."""
    if not store.claim(job_id, worker.id):
        return None
    job = store.get(job_id)
    if job is None:
        return None
    progress = StoreProgress(store, job_id)
    return run_job(job, worker.pipeline, storage, store, progress, is_cancelled, worker=worker)


def run_job(
    job: Job,
    pipeline: Pipeline,
    storage: Storage,
    store: JobStore,
    report_progress: ProgressFn | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    *,
    worker: Worker | None = None,
) -> Job:
    """Execute a claimed (running) job and record its outcome in `store`; returns the final record.

    Outcomes: done (output stored, expiry set), failed (error code and message, no output), or
    cancelled (the owner's DELETE won; whatever was written is removed).
    """
    worker = worker or Worker(pipeline=pipeline, work_root=Path("facefuse-work"))
    report = report_progress or (lambda stage, done, total: None)
    check = _cancel_check(store, job.id, is_cancelled)
    work = worker.work_root / job.id
    fmt = output_format_for(job)
    key = output_key(job.id, fmt)
    names: dict[str, str] = {}
    try:
        work.mkdir(parents=True, exist_ok=True)
        options = JobOptions.model_validate(job.options)
        local = work / f"result.{fmt}"
        if job.kind is JobKind.VIDEO:
            summary = _run_video(job, options, worker, storage, local, report, check, names)
        else:
            summary = _run_image(job, options, worker, storage, local, report, check, names)
        check()
        storage.put_file(key, local)
        now = time.time()
        finished = store.update(
            job.id,
            expect=[JobStatus.RUNNING],
            status=JobStatus.DONE,
            output=key,
            summary=summary,
            finished_at=now,
            expires_at=now + worker.result_ttl_s,
            progress={
                "stage": "done",
                "frames_done": summary.get("frames_in", 1),
                "frames_total": summary.get("frames_in", 1),
            },
        )
        if not finished:  # cancelled in the last moment: the owner does not want it kept
            storage.delete(key)
    except JobCancelled:
        storage.delete(key)
        log.info("job %s cancelled", job.id)
    except FacefuseError as exc:
        _fail(store, job.id, error_code(exc), _scrub(str(exc), names, work), worker)
        log.info("job %s failed: %s", job.id, error_code(exc))
    except Exception as exc:
        log.exception("job %s: internal error", job.id)
        _fail(store, job.id, "internal", f"internal error ({type(exc).__name__})", worker)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        # Inputs are needed only while the job runs; the result stays until it expires.
        storage.delete(input_prefix(job.id))
    return store.get(job.id) or job


def _fail(store: JobStore, job_id: str, code: str, message: str, worker: Worker) -> None:
    now = time.time()
    store.update(
        job_id,
        expect=[JobStatus.RUNNING],
        status=JobStatus.FAILED,
        error={"code": code, "message": message},
        finished_at=now,
        expires_at=now + worker.result_ttl_s,
    )


def error_code(exc: FacefuseError) -> str:
    """snake_case of the error class: InputInvalid -> input_invalid, NoTargetFace -> no_target_face."""
    name = type(exc).__name__
    if name == "FacefuseError":
        return exc.exit_code.name.lower()
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _scrub(message: str, names: dict[str, str], work: Path) -> str:
    """Error messages name files; a client must see its roles (target, source 1), not server paths."""
    for path, role in sorted(names.items(), key=lambda kv: -len(kv[0])):
        message = message.replace(path, role)
    return message.replace(str(work), "output")


def _cancel_check(
    store: JobStore, job_id: str, is_cancelled: Callable[[], bool] | None
) -> Callable[[], None]:
    """A cheap callable that raises JobCancelled; reads the store at most every few hundred ms."""
    last = [0.0]

    def check() -> None:
        if is_cancelled is not None and is_cancelled():
            raise JobCancelled(job_id)
        now = time.monotonic()
        if now - last[0] < CANCEL_CHECK_INTERVAL_S:
            return
        last[0] = now
        current = store.get(job_id)
        if current is None or current.status is not JobStatus.RUNNING:
            raise JobCancelled(job_id)

    return check


class StoreProgress:
    """Writes progress to the store: at every stage change, else at most every 0.3 s."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self._stage = ""
        self._last = 0.0
        self._stage_start: tuple[float, int] = (time.time(), 0)

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage == self._stage and now - self._last < PROGRESS_WRITE_INTERVAL_S and done < total:
            return
        if stage != self._stage:
            self._stage_start = (time.time(), done)
        self._stage, self._last = stage, now
        started, base = self._stage_start
        self.store.update(
            self.job_id,
            expect=[JobStatus.RUNNING],
            progress={
                "stage": stage,
                "frames_done": done,
                "frames_total": total,
                "stage_started_at": started,
                "frames_at_start": base,
            },
        )


def _paths(
    stack: contextlib.ExitStack, storage: Storage, keys: list[str], role: str, names: dict[str, str]
) -> list[Path]:
    paths = []
    for i, key in enumerate(keys):
        path = stack.enter_context(storage.local_path(key))
        names[str(path)] = f"{role} {i + 1}" if len(keys) > 1 else role
        paths.append(path)
    return paths


def _identities(
    job: Job,
    options: JobOptions,
    pipe: Pipeline,
    storage: Storage,
    stack: contextlib.ExitStack,
    names: dict[str, str],
) -> tuple[Any, np.ndarray | None]:
    sources = _paths(stack, storage, job.inputs["sources"], "source", names)
    source = pipe.source(sources)
    reference = None
    if job.inputs.get("reference"):
        ref = _paths(stack, storage, [job.inputs["reference"]], "reference", names)
        reference = pipe.reference(ref)
    return source, reference


def _reference_from_target(pipe: Pipeline, rgb: np.ndarray, index: int) -> np.ndarray:
    """The descriptor of target face `index` in /v1/faces order (largest first)."""
    faces = order_faces(pipe.analyser.analyse(rgb, largest_only=False, descriptors=True), Order.LARGE_SMALL)
    if not 0 <= index < len(faces):
        raise InputInvalid(f"reference_face_index {index}: the target has {len(faces)} face(s)")
    return faces[index].descriptor


def _run_image(
    job: Job,
    options: JobOptions,
    worker: Worker,
    storage: Storage,
    local: Path,
    report: ProgressFn,
    check: Callable[[], None],
    names: dict[str, str],
) -> dict[str, Any]:
    from facefuse.media import write_image

    pipe = worker.pipeline_for(options)
    timings = Timings()
    report("decode", 0, 1)
    with contextlib.ExitStack() as stack:
        (target_path,) = _paths(stack, storage, [job.inputs["target"]], "target", names)
        with timings.stage("read"):
            target = pipe.load(target_path)
        check()
        report("analyse", 0, 1)
        with timings.stage("source"):
            source, reference = _identities(job, options, pipe, storage, stack, names)
            if reference is None and options.reference_face_index is not None:
                reference = _reference_from_target(pipe, target, options.reference_face_index)
    check()
    report("swap", 0, 1)
    selection = options.selection()
    result = pipe.run(source, target, selection, reference=reference, timings=timings)
    check_result(result, selection, "target")
    check()
    report("write", 0, 1)
    with timings.stage("write"):
        write_image(
            result.image,
            local,
            source_type=pipe.swapper.digital_source_type,
            jpeg_quality=options.jpeg_quality,
            signer=worker.signer,
        )
    summary = {"swapper": pipe.swapper.name, **result.summary(), "frames_in": 1}
    summary["stages_ms"] = timings.rounded()
    summary["width"], summary["height"] = int(target.shape[1]), int(target.shape[0])
    return summary


def _run_video(
    job: Job,
    options: JobOptions,
    worker: Worker,
    storage: Storage,
    local: Path,
    report: ProgressFn,
    check: Callable[[], None],
    names: dict[str, str],
) -> dict[str, Any]:
    from facefuse.service.uploads import check_video, output_problem
    from facefuse.stream import FrameSwapper
    from facefuse.video import VideoJob

    pipe = worker.pipeline_for(options)
    report("probe", 0, 0)
    with contextlib.ExitStack() as stack:
        (target_path,) = _paths(stack, storage, [job.inputs["target"]], "target", names)
        info = check_video(target_path, worker.max_pixels, worker.max_video_frames)
        problem = output_problem(info, options, worker.max_pixels, worker.max_video_frames)
        if problem:  # checked at submit too; a worker with lower limits than the API still holds
            raise InputInvalid(problem)
        report("analyse", 0, 0)
        source, reference = _identities(job, options, pipe, storage, stack, names)
        if reference is None and options.reference_face_index is not None:
            reference = _reference_from_target(
                pipe, _first_frame(info, options), options.reference_face_index
            )
        check()
        selection = options.selection()

        def progress(done: int, total: int) -> None:
            check()
            report("swap", done, total)

        video = VideoJob(
            info=info,
            output=local,
            options=dataclasses.replace(
                # onnxruntime's thread pools do not survive a fork: learned models stay in this process.
                options.video_settings(workers=1 if pipe.models.learned else worker.video_workers),
                segment_frames=worker.segment_frames,
            ),
            make_processor=lambda: FrameSwapper(pipe, source, selection, reference=reference),
            # What else decides the bytes (the input and options are in the manifest already).
            key={
                "job": job.id,
                "sources": job.inputs["sources"],
                "options": job.options,
                "swapper": pipe.swapper.name,
            },
            source_type=pipe.swapper.digital_source_type,
            on_progress=progress,
        )
        result = video.run(resume=True).to_dict()
    keep = (
        "frames_in", "frames_out", "frames_broken", "frames_with_faces", "faces_found", "faces_swapped",
        "segments", "segments_resumed", "wall_s", "fps", "stages_ms", "audio", "encoder",
    )  # fmt: skip
    summary = {name: result[name] for name in keep}
    summary["swapper"] = pipe.swapper.name
    summary["width"], summary["height"] = info.width, info.height
    return summary


def _first_frame(info: Any, options: JobOptions) -> np.ndarray:
    from facefuse.media import video as media
    from facefuse.video import make_timeline

    timeline = make_timeline(info, options.video_settings())
    with media.FrameReader(info) as reader:
        frame = next(iter(reader.frames(timeline.first, timeline.first + 1)), None)
    if frame is None:
        raise InputInvalid("target: the first frame cannot be decoded")
    return media.upright(media.frame_to_rgb(frame), info.rotation)


def expire_results(store: JobStore, storage: Storage, now: float | None = None) -> list[str]:
    """Delete the files of finished jobs whose time is up and mark them expired; their ids."""
    now = time.time() if now is None else now
    gone = []
    for job in store.expired(now):
        storage.delete(job_prefix(job.id))
        if store.update(job.id, expect=[job.status], status=JobStatus.EXPIRED, output=None):
            gone.append(job.id)
    return gone
