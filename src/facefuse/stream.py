"""Per-stream swapping: a face tracker, selection decided per track, and the swapper, frame by frame.

>>> swapper = FrameSwapper(pipe, pipe.source("me.jpg"), Selection(mode=Mode.MANY))
>>> for rgb, t in frames:
...     result = swapper.process(rgb, t)

With a learned swapper, `process_batch` takes several consecutive frames at once and runs every face
among them through one model call (what makes the GPU backend fast); its output is the same as
calling `process` on each frame in turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from facefuse.analysis.detect import Detection
from facefuse.analysis.face import Face
from facefuse.analysis.select import Mode, Selection, select_faces
from facefuse.analysis.track import FaceTracker, Track, TrackerSettings
from facefuse.pipeline import Identity, Pipeline, Timings

_SOURCE = -1  # plan value: the track gets the general source


@dataclass
class FrameResult:
    image: np.ndarray  # RGB uint8; the input array itself when nothing was swapped
    faces_found: int
    faces_swapped: int
    track_ids: list[int] = field(default_factory=list)  # tracks swapped in this frame


class FrameSwapper:
    """Stateful per-stream swap: tracker + selection + swapper. Used by video and (later) live camera.

    Who gets swapped is decided once per track (when it is born, or for mode `one` when a face is
    first chosen) and then followed, so the choice never flips between frames.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        source: Identity | None,
        selection: Selection | None = None,
        *,
        reference: np.ndarray | None = None,
        people: Sequence[tuple[Identity, np.ndarray]] = (),
        tracker: TrackerSettings | None = None,
        batch_frames: int = 1,
    ) -> None:
        """`batch_frames`: how many consecutive frames a video run may hand to `process_batch` at once
        (1: one at a time); only swappers with batched model calls (learned ones) use more."""
        if batch_frames < 1:
            raise ValueError("batch_frames must be at least 1")
        self.pipeline = pipeline
        self.batch_frames = batch_frames if callable(getattr(pipeline.swapper, "run_batch", None)) else 1
        self.source = source
        self.selection = (selection or Selection()).resolved(pipeline.analyser.same_person)
        self.reference = reference
        self.people = list(people)
        if self.selection.mode is Mode.REFERENCE and reference is None and source is not None:
            raise ValueError("reference mode needs a reference descriptor")
        settings = tracker or TrackerSettings()
        if self.needs_identity and not settings.descriptors:
            settings = replace(settings, descriptors=True)
        if not (self.selection.needs_all_faces or self.people) and not settings.largest_only:
            settings = replace(settings, largest_only=True)
        self.tracker = FaceTracker(pipeline.analyser, settings)
        self.reset()

    @property
    def needs_identity(self) -> bool:
        return bool(self.people) or self.selection.mode is Mode.REFERENCE

    def reset(self) -> None:
        """Forget every track and every choice: from here the same frames give the same output."""
        self.tracker.reset()
        self._plan: dict[int, int | None] = {}  # track id -> person index, SOURCE, or None: left alone
        self._chosen: int | None = None  # the one track followed when a single face is wanted

    def set_source(self, source: Identity) -> None:
        """Swap in another identity from the next frame on; tracks and choices are kept."""
        self.source = source

    def process(
        self,
        frame: np.ndarray,
        t: float,
        timings: Timings | None = None,
        *,
        detections: Sequence[Detection] | None = None,
    ) -> FrameResult:
        """Swap into one RGB uint8 frame; `t` is its time in seconds (frames must come in order).

        `detections`: see FaceTracker.update (detection done elsewhere; None: the tracker detects).
        """
        timings = timings or Timings()
        with timings.stage("track"):
            tracks = self.tracker.update(frame, t, detections=detections)
        with timings.stage("select"):
            plan = self._decide(tracks)
        out = frame
        with timings.stage("swap"):
            for track, ident in plan:
                out = self.pipeline.swap_face(out, track.face, ident)
        return FrameResult(out, len(tracks), len(plan), [tr.id for tr, _ in plan])

    def process_batch(
        self, frames: Sequence[tuple[np.ndarray, float]], timings: Timings | None = None
    ) -> list[FrameResult]:
        """`process` for consecutive (frame, t) pairs, sharing the swapper's model calls between them.

        Faces are swapped in rounds: round r takes the r-th planned face of every frame, so a frame's
        second face is cropped from that frame after its first was pasted (and enhanced), exactly as
        the one-frame path does. Most frames hold one face, so one round covers the batch.
        """
        timings = timings or Timings()
        if not frames:
            return []
        swapper = self.pipeline.swapper
        if not callable(getattr(swapper, "run_batch", None)):
            return [self.process(frame, t, timings) for frame, t in frames]
        # Tracks live on across frames (their face is updated in place): keep each frame's own faces.
        plans: list[tuple[int, list[tuple[int, Face, Identity]]]] = []
        for frame, t in frames:
            with timings.stage("track"):
                tracks = self.tracker.update(frame, t)
            with timings.stage("select"):
                plan = [(tr.id, tr.face, ident) for tr, ident in self._decide(tracks)]
            plans.append((len(tracks), plan))
        outs = [frame for frame, _ in frames]
        enhancer = self.pipeline.enhancer
        with timings.stage("swap"):
            for r in range(max(len(plan) for _, plan in plans)):
                jobs = [(i, plan[r]) for i, (_, plan) in enumerate(plans) if len(plan) > r]
                pending = [swapper.begin(outs[i], face, ident.prepared) for i, (_, face, ident) in jobs]
                swapped = swapper.run_batch(pending)
                for (i, (_, face, _)), p, phases in zip(jobs, pending, swapped, strict=True):
                    outs[i] = swapper.finish(outs[i], p, phases)
                    if enhancer is not None:
                        outs[i] = enhancer.enhance(outs[i], face)
        return [
            FrameResult(out, found, len(plan), [tid for tid, _, _ in plan])
            for out, (found, plan) in zip(outs, plans, strict=True)
        ]

    @property
    def _single(self) -> bool:
        return self.selection.mode is Mode.ONE or self.selection.index is not None

    def _decide(self, tracks: list[Track]) -> list[tuple[Track, Identity]]:
        alive = self.tracker.alive_ids()
        for tr in tracks:
            if tr.id not in self._plan:
                self._plan[tr.id] = self._assign(tr, alive)
        plan = [(tr, self.people[p][0]) for tr in tracks if (p := self._plan[tr.id]) is not None and p >= 0]
        if self.source is None:
            return plan
        wanted = [tr for tr in tracks if self._plan[tr.id] == _SOURCE]
        if self._single:
            # Chosen once and followed while it lives, so two faces of about the same size never
            # take turns from frame to frame.
            if self._chosen not in alive:
                self._chosen = self._pick(wanted)
            wanted = [tr for tr in wanted if tr.id == self._chosen]
        return plan + [(tr, self.source) for tr in wanted]

    def _pick(self, tracks: list[Track]) -> int | None:
        ranked = select_faces([tr.face for tr in tracks], replace(self.selection, mode=Mode.MANY))
        return next((tr.id for tr in tracks if ranked and tr.face is ranked[0]), None)

    def _assign(self, track: Track, alive: set[int]) -> int | None:
        """Decided once, when a track is first seen: its person's index, SOURCE, or None (left alone)."""
        sel = self.selection
        if self.people:
            claimed = {p for i, p in self._plan.items() if i in alive and p is not None and p >= 0}
            free = [i for i in range(len(self.people)) if i not in claimed]
            if free:
                dist = [float(np.linalg.norm(track.descriptor - self.people[i][1])) for i in free]
                best = int(np.argmin(dist))
                if dist[best] <= sel.reference_distance:
                    return free[best]
        if sel.mode is Mode.REFERENCE:
            near = float(np.linalg.norm(track.descriptor - self.reference)) <= sel.reference_distance
            return _SOURCE if near else None
        return _SOURCE
