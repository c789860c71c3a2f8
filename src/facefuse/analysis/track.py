"""Faces followed through a video: one id per person, steady landmarks, a few ms a frame.

Per frame, for every live track:
- the shape predictor (~1 ms) runs inside a box placed from the track's previous landmarks, so the
  expensive detector is not needed to follow a face;
- a cheap check confirms a face is still there: dlib's HOG detector on a small crop aligned to the
  predicted face (upright, the face at a fixed size, ~1 ms), skipped for a frame or two while that
  crop looks as it did when last confirmed. A track whose checks keep failing is dropped, and while
  a check fails the track is not reported, so nothing is swapped onto background;
- the 68 points go through a One Euro filter (still faces stay still, fast motion is followed) and
  the pose follows from the smoothed points (fitted only when something asks for it).

A full detection on a downscaled frame runs every `detect_every` frames, on every frame while no
track is alive, at every scene cut and whenever a track is missing; it starts tracks for new faces.
Tracks are matched to detections by box overlap. A scene cut ends every track: the person now at the
same place is usually someone else. Where descriptors are wanted (selection by identity) a track's
descriptor is computed once, when it is born, and a new track close to a recently lost one in
descriptor space takes back that id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from facefuse.analysis.analyser import FaceAnalyser
from facefuse.analysis.detect import HOG_WINDOW, Detection
from facefuse.analysis.face import Face
from facefuse.analysis.landmarks import DETECTOR_BOX_CENTRE, DETECTOR_BOX_SIZE, detector_box
from facefuse.geometry import TEMPLATE_68, five_from_68, invert, similarity, transform_points


class OneEuroFilter:
    """Casiez et al. 2012: a low-pass filter whose cutoff rises with speed, so a still signal is
    steadied and a fast one followed without lag. Works element-wise on arrays of any fixed shape.

    `min_cutoff` (Hz) sets the smoothing at rest, `beta` how fast the cutoff opens with speed (per
    unit of `scale` per second: pass a face's size as `scale` to make `beta` independent of it),
    `d_cutoff` (Hz) smooths the speed estimate itself.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t = 0.0

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._x is None or self._dx is None:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        # A repeated or backwards timestamp (bad container timing) must not divide by zero.
        dt = t - self._t if t > self._t else 1.0 / 30
        self._t = t
        self._dx = self._dx + self._alpha(self.d_cutoff, dt) * ((x - self._x) / dt - self._dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx) / scale
        self._x = self._x + self._alpha(cutoff, dt) * (x - self._x)
        return self._x.copy()


@dataclass
class TrackerSettings:
    # Frames between full detections while every track is confirmed. Tracked faces are checked every
    # frame by a cheap crop detection, so this pass only looks for newcomers; at 640x360 it is the
    # tracker's largest cost (a third of it at 10 frames), hence half a second between passes.
    detect_every: int = 15
    # Frames between full detections while no track is alive: a face that walks in is picked up
    # within a fifth of a second at 30 fps. Cuts get a fine pass at once, so faces after a cut are
    # found on their first frame; long stretches with no face (cutaways, crowds' backs) cost a sixth.
    search_every: int = 6
    detect_long_side: int = 640  # full detection on a copy this long (never upsampled): faces >= 80/scale
    min_face: int = 40  # px: the fine pass reaches faces this small; smaller ones start no track
    fine_every: int = 90  # frames between fine passes (also at the first frame and at every cut)
    # Only the largest face is wanted, and once chosen it is followed (selection `one`, largest
    # first): where a fine pass is due, the regular pass runs first, and if it finds a face the fine
    # one is not needed (every face it could add is smaller than one already found). And while
    # tracks are confirmed a newcomer could not be chosen, so full detections there only check for
    # drift: every `drift_every` frames instead of `detect_every`.
    largest_only: bool = False
    drift_every: int = 30
    max_long_side: int = 2000  # the fine pass never upsamples past this: its cost grows with area
    iou_match: float = 0.3  # box overlap for a detection to belong to a track
    descriptors: bool = False  # compute a descriptor when a track is born (~70 ms, once a track)
    # A newborn this close to a recently lost track takes back its id (None: the recogniser's own).
    descriptor_match: float | None = None
    memory: float = 2.0  # seconds a lost track can be taken back
    max_missed: int = 3  # frames a track may go unconfirmed before it is dropped
    verify_every: int = 1  # frames between crop checks of each track (1: every frame)
    # The check's detector is skipped, for at most `same_skips` frames in a row, while the aligned
    # face crop looks the same as when the detector last confirmed it: an unchanged face is still a
    # face. Measured as the mean difference of 16x16 grey thumbnails, each brought to zero mean and
    # unit spread so dim, flat footage is judged as strictly as bright footage: consecutive frames of
    # a face differ by ~0.12 (median), a face replaced by anything else by 0.4 or more.
    same_crop: float = 0.1
    same_skips: int = 2
    verify_size: int = 88  # detector box size (px) in the aligned check crop; the HOG window is 80
    # Detector threshold for the crop check: lenient, the place is known (None: the detector's own,
    # -0.5 dlib margin for HOG).
    verify_threshold: float | None = None
    cut_histogram: float = 0.25  # colour-histogram change (0..1) that, with `cut_pixels`, marks a cut
    cut_pixels: float = 15.0  # mean change of a 32x18 thumbnail (0..255)
    # One Euro filters (see LandmarkSmoother), speeds in eye distances per second. Under fast motion
    # the lag of the head's placement tends to 1 / (2 pi beta) eye distances: 0.016 for 10.
    min_cutoff: float = 1.0
    beta: float = 10.0
    shape_min_cutoff: float = 1.0
    shape_beta: float = 3.0
    d_cutoff: float = 1.0

    def scales(self, shape: tuple[int, ...]) -> tuple[float, float]:
        """(regular, fine) detection scales for frames of this shape."""
        long_side = max(shape[:2])
        regular = min(1.0, self.detect_long_side / long_side)
        fine = max(regular, min(HOG_WINDOW / self.min_face, self.max_long_side / long_side))
        return regular, fine


class LandmarkSmoother:
    """One Euro smoothing of 68 points, split into the head's placement and the face's shape.

    The placement (a similarity: position, size, rotation) is fitted to all 68 points, so it carries
    little noise and can follow fast motion with a light filter; the shape left over (expression,
    in eye distances) is where each point's own noise lives, and it moves slower, so it is filtered
    more. Filtering each point alone would let their noise open the filter.
    """

    def __init__(self, settings: TrackerSettings) -> None:
        st = settings
        self._placement = OneEuroFilter(st.min_cutoff, st.beta, st.d_cutoff)
        self._shape = OneEuroFilter(st.shape_min_cutoff, st.shape_beta, st.d_cutoff)

    def __call__(self, points: np.ndarray, t: float) -> np.ndarray:
        m = similarity(TEMPLATE_68, points)
        a, b = float(m[0, 0]), float(m[1, 0])
        centre = points.mean(axis=0)
        shape = transform_points(points, invert(m)) - TEMPLATE_68
        # (a, b) = size * (cos, sin) of the rotation: linear, so filtering them never wraps angles.
        placed = self._placement(np.array([centre[0], centre[1], a, b]), t, scale=max(math.hypot(a, b), 1.0))
        shape = self._shape(shape, t)
        cx, cy, a, b = placed
        out = transform_points((TEMPLATE_68 + shape).astype(np.float32), np.array([[a, -b, 0], [b, a, 0]]))
        return (out - out.mean(axis=0) + np.array([cx, cy])).astype(np.float32)


@dataclass
class Track:
    id: int
    face: Face  # in the latest frame, with smoothed landmarks, box and pose
    hits: int = 1  # frames the track has been confirmed in
    missed: int = 0  # consecutive frames it went unconfirmed (0: seen in the latest frame)
    descriptor: np.ndarray | None = field(default=None, repr=False)
    raw_68: np.ndarray = field(default_factory=lambda: np.zeros((68, 2), np.float32), repr=False)
    age: int = 0  # frames since birth
    # Thumbnail of the aligned crop the detector last confirmed, and checks skipped since.
    checked_thumb: np.ndarray | None = field(default=None, repr=False)
    skipped_checks: int = 0
    smoother: LandmarkSmoother = field(
        default_factory=lambda: LandmarkSmoother(TrackerSettings()), repr=False
    )
    # Handed to every frame's Face of this track (Face.memory): a new track starts with none.
    memory: dict = field(default_factory=dict, repr=False)

    @property
    def visible(self) -> bool:
        return self.missed == 0


@dataclass
class _Lost:
    id: int
    box: np.ndarray
    descriptor: np.ndarray | None
    t: float
    after_cut: bool


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
    iy = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
    inter = ix * iy
    union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
    return inter / union if union > 0 else 0.0


def _mostly_inside(box: np.ndarray, shape: tuple[int, ...]) -> bool:
    """At least half the box lies in the frame: a face leaving the picture is not followed off it."""
    h, w = shape[:2]
    ix = max(0.0, float(min(box[2], w) - max(box[0], 0)))
    iy = max(0.0, float(min(box[3], h) - max(box[1], 0)))
    return ix * iy >= 0.5 * float((box[2] - box[0]) * (box[3] - box[1]))


def _verify_crop(points: np.ndarray, box_px: int) -> tuple[np.ndarray, int]:
    """Image -> crop affine putting the face upright with its detector box `box_px` wide, and the
    crop size (1.3 boxes, so the detector pyramid stays short)."""
    m = similarity(TEMPLATE_68, points)
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    angle = math.atan2(m[1, 0], m[0, 0])
    k = box_px / (DETECTOR_BOX_SIZE * scale)
    c, s = math.cos(angle) * k, math.sin(angle) * k
    size = int(round(1.3 * box_px))
    a = np.array([[c, s, 0.0], [-s, c, 0.0]], np.float32)
    centre = transform_points(DETECTOR_BOX_CENTRE[None], m)[0]
    a[:, 2] = size / 2 - a[:, :2] @ centre
    return a, size


class _CutDetector:
    """Notices a shot change from a colour histogram and a thumbnail; ~0.3 ms a frame."""

    def __init__(self, histogram: float, pixels: float) -> None:
        self.histogram, self.pixels = histogram, pixels
        self.reset()

    def reset(self) -> None:
        self._thumb: np.ndarray | None = None
        self._hist: np.ndarray | None = None

    def __call__(self, frame: np.ndarray) -> bool:
        small = cv2.resize(frame, (64, 36), interpolation=cv2.INTER_AREA)
        thumb = cv2.resize(small, (32, 18), interpolation=cv2.INTER_AREA).astype(np.float32)
        hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1], None, [16, 8], [0, 180, 0, 256]).ravel()
        hist /= max(float(hist.sum()), 1.0)
        cut = False
        if self._thumb is not None and self._hist is not None:
            dh = 0.5 * float(np.abs(hist - self._hist).sum())
            dp = float(np.abs(thumb - self._thumb).mean())
            cut = dh > self.histogram and dp > self.pixels
        self._thumb, self._hist = thumb, hist
        return cut


class FaceTracker:
    """Follows every face through a stream of frames; `update` once per frame, in order."""

    def __init__(self, analyser: FaceAnalyser, settings: TrackerSettings | None = None) -> None:
        self.analyser = analyser
        self.settings = settings or TrackerSettings()
        self._cuts = _CutDetector(self.settings.cut_histogram, self.settings.cut_pixels)
        self.reset()

    def reset(self) -> None:
        """Forget everything, ids included: from here the same frames give the same tracks."""
        self.tracks: list[Track] = []
        self._grey: np.ndarray | None = None  # this frame in grey, made on first use
        self._lost: list[_Lost] = []
        self._next_id = 0
        self._since_detect = 0
        # The first frame gets the fine pass, as a cut does.
        self._since_fine = self.settings.fine_every - 1
        self._cuts.reset()

    def alive_ids(self) -> set[int]:
        """Ids of every track still alive, including ones missing from the latest frame."""
        return {tr.id for tr in self.tracks}

    def update(
        self, frame: np.ndarray, t: float, *, detections: Sequence[Detection] | None = None
    ) -> list[Track]:
        """Advance every track to this frame (RGB uint8); the tracks seen in it, oldest first.

        With `detections` (found elsewhere, e.g. by a detector running beside a live stream on a
        slightly older frame) the tracker runs no detector of its own: those boxes are matched to
        the tracks and unmatched ones start new tracks; pass an empty list on frames without news.
        """
        frame = np.ascontiguousarray(frame)
        self._grey = None
        st = self.settings
        cut = self._cuts(frame)
        if cut:
            for tr in self.tracks:
                self._forget(tr, t, after_cut=True)
            self.tracks = []
        for tr in self.tracks:
            self._follow(frame, tr)
        self._since_detect += 1
        self._since_fine += 1
        regular, fine = st.scales(frame.shape)
        if detections is not None:
            if detections:
                self._merge(frame, t, list(detections), reseed=False)
        elif cut or self._since_fine >= st.fine_every:
            if not (st.largest_only and fine > regular and self._detect(frame, t, regular)):
                self._detect(frame, t, fine)
            self._since_fine = 0
        elif self._due(regular_interval=self._regular_interval()):
            self._detect(frame, t, regular)
        kept = []
        for tr in self.tracks:
            if tr.missed > st.max_missed:
                self._forget(tr, t, after_cut=False)
            else:
                kept.append(tr)
        self.tracks = self._dedupe(kept)
        for tr in self.tracks:
            self._smooth(tr, frame.shape, t)
        return [tr for tr in self.tracks if tr.visible]

    def _for_detector(self, frame: np.ndarray) -> np.ndarray:
        """The frame as the detector runs fastest on it: grey where it takes grey (made once a frame)."""
        if not self.analyser.detector.takes_grey:
            return frame
        if self._grey is None:
            self._grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        return self._grey

    def _regular_interval(self) -> int:
        st = self.settings
        if not self.tracks:
            return st.search_every
        return max(st.detect_every, st.drift_every) if st.largest_only else st.detect_every

    def _due(self, regular_interval: int) -> bool:
        return self._since_detect >= regular_interval or any(tr.missed for tr in self.tracks)

    def _follow(self, frame: np.ndarray, track: Track) -> None:
        track.age += 1
        box = detector_box(track.raw_68)
        track.raw_68 = self.analyser.landmarks(frame, box)
        if not _mostly_inside(box, frame.shape):
            track.missed += 1
        elif track.age % self.settings.verify_every == 0:
            confirmed = self._verify(frame, track)
            track.missed = 0 if confirmed else track.missed + 1
            track.hits += int(confirmed)

    def _verify(self, frame: np.ndarray, track: Track) -> bool:
        st = self.settings
        a, size = _verify_crop(track.raw_68, st.verify_size)
        crop = cv2.warpAffine(frame, a, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        thumb = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), (16, 16), interpolation=cv2.INTER_AREA)
        thumb = thumb.astype(np.float32)
        # Plus two grey levels: a flat crop stays flat instead of having its noise blown up.
        thumb = (thumb - thumb.mean()) / (thumb.std() + 2.0)
        if (
            track.checked_thumb is not None
            and track.skipped_checks < st.same_skips
            and float(np.abs(thumb - track.checked_thumb).mean()) < st.same_crop
        ):
            track.skipped_checks += 1
            return True
        # A face of about the expected size near the middle: anything else is not this track.
        threshold = self.analyser.detector.lenient if st.verify_threshold is None else st.verify_threshold
        for det in self.analyser.detector.run(crop, 1.0, threshold):
            offset = np.abs((det.box[:2] + det.box[2:]) / 2 - size / 2).max()
            width = float(det.box[2] - det.box[0])
            if offset < 0.25 * st.verify_size and 0.7 < width / st.verify_size < 1.45:
                track.checked_thumb, track.skipped_checks = thumb, 0
                return True
        track.checked_thumb = None
        return False

    def _detect(self, frame: np.ndarray, t: float, scale: float) -> int:
        """A full-frame detection at `scale`, merged into the tracks; how many faces it found."""
        self._since_detect = 0
        return self._merge(
            frame, t, self.analyser.detector.run(self._for_detector(frame), scale), reseed=True
        )

    def _merge(self, frame: np.ndarray, t: float, found: list[Detection], *, reseed: bool) -> int:
        """Match detections to tracks by overlap; unmatched ones start tracks. `reseed`: a track that
        drifted off its detection restarts from it (not for detections made on an older frame).
        Returns how many detections were big enough to count."""
        st = self.settings
        found = [d for d in found if d.box[2] - d.box[0] >= st.min_face]
        boxes = [d.box for d in found]
        current = [detector_box(tr.raw_68) for tr in self.tracks]
        pairs = sorted(
            ((box_iou(c, b), ti, bi) for ti, c in enumerate(current) for bi, b in enumerate(boxes)),
            reverse=True,
        )
        used_t: set[int] = set()
        used_b: set[int] = set()
        for iou, ti, bi in pairs:
            if iou < st.iou_match:
                break
            if ti in used_t or bi in used_b:
                continue
            used_t.add(ti)
            used_b.add(bi)
            tr = self.tracks[ti]
            if tr.missed:
                tr.missed = 0
                tr.hits += 1
            if (
                reseed and iou < 0.5
            ):  # the track has drifted off its face: start its points again from the detection
                tr.raw_68 = self.analyser.landmarks(frame, boxes[bi])
        for bi, det in enumerate(found):
            if bi not in used_b:
                self._birth(frame, det, t)
        return len(found)

    def _birth(self, frame: np.ndarray, det: Detection, t: float) -> None:
        st = self.settings
        face = self.analyser.face_at(frame, det)
        if st.descriptors:
            self.analyser.describe(frame, face)
        track = Track(
            id=self._reclaim(face, t),
            face=face,
            descriptor=face.descriptor,
            raw_68=face.landmarks_68,
            smoother=LandmarkSmoother(st),
        )
        face.memory = track.memory
        self.tracks.append(track)

    def _reclaim(self, face: Face, t: float) -> int:
        """A recently lost id for this face (same identity, or same place without a cut), else a new one."""
        st = self.settings
        self._lost = [lost for lost in self._lost if t - lost.t <= st.memory]
        best: tuple[float, _Lost] | None = None
        for lost in self._lost:
            if face.descriptor is not None and lost.descriptor is not None:
                d = float(np.linalg.norm(face.descriptor - lost.descriptor))
                ok = d <= (self.analyser.same_track if st.descriptor_match is None else st.descriptor_match)
            else:
                d = 1.0 - box_iou(face.box, lost.box)
                ok = not lost.after_cut and d <= 1.0 - st.iou_match
            if ok and (best is None or d < best[0]):
                best = (d, lost)
        if best is not None:
            self._lost.remove(best[1])
            return best[1].id
        self._next_id += 1
        return self._next_id - 1

    def _forget(self, track: Track, t: float, *, after_cut: bool) -> None:
        box = detector_box(track.raw_68)
        self._lost.append(_Lost(track.id, box, track.descriptor, t, after_cut))

    def _dedupe(self, tracks: list[Track]) -> list[Track]:
        """Two tracks that converged on one face: the older one keeps it."""
        kept: list[Track] = []
        for tr in sorted(tracks, key=lambda tr: -tr.age):
            box = detector_box(tr.raw_68)
            if all(box_iou(box, detector_box(k.raw_68)) < 0.5 for k in kept):
                kept.append(tr)
        return sorted(kept, key=lambda tr: tr.id)

    def _smooth(self, track: Track, shape: tuple[int, ...], t: float) -> None:
        points = track.smoother(track.raw_68, t)
        lo, hi = points.min(axis=0), points.max(axis=0)
        track.face = Face(
            box=np.array([lo[0], lo[1], hi[0], hi[1]], np.float32),
            score=track.face.score,
            landmarks_68=points,
            landmarks_5=five_from_68(points),
            image_size=shape[:2],
            sharpness=track.face.sharpness,
            descriptor=track.descriptor,
            memory=track.memory,
        )


def landmark_jitter(frames_landmarks: Sequence[np.ndarray | None], max_step: float | None = 1.0) -> float:
    """Frame-to-frame landmark shake, in eye distances: the measure video smoothing is judged by.

    For every three consecutive frames that all have a face, the second difference
    p[t+1] - 2 p[t] + p[t-1] of each of the 68 points (zero for motion at constant velocity, so pans
    and steady turns do not count, only shake), its length averaged over the points and divided by
    the middle frame's outer-eye-corner distance. The result is the mean over those triples (nan if
    there are none). Feed it the landmarks of one face per frame (None where there is none).

    A triple in which the points move more than `max_step` eye distances between two frames (on
    average) holds two different faces, across a cut or where another face became the largest: it is
    left out, as one such jump would outweigh all the shake in a clip. `max_step=None` counts them.
    """
    values = []
    for a, b, c in zip(frames_landmarks, frames_landmarks[1:], frames_landmarks[2:], strict=False):
        if a is None or b is None or c is None:
            continue
        a, b, c = (np.asarray(p, np.float64) for p in (a, b, c))
        eye = float(np.linalg.norm(b[45] - b[36]))
        if eye <= 0:
            continue
        if max_step is not None:
            step = max(np.linalg.norm(b - a, axis=1).mean(), np.linalg.norm(c - b, axis=1).mean()) / eye
            if step > max_step:
                continue
        values.append(float(np.linalg.norm(c - 2 * b + a, axis=1).mean()) / eye)
    return float(np.mean(values)) if values else float("nan")


def analysed_landmarks(
    analyser: FaceAnalyser, frames: Sequence[np.ndarray], *, largest_only: bool = True
) -> list[np.ndarray | None]:
    """Plain per-frame detection + landmarks (no tracking): the largest face's 68 points, or None."""
    out: list[np.ndarray | None] = []
    for frame in frames:
        faces = analyser.analyse(frame, largest_only=largest_only)
        out.append(faces[0].landmarks_68 if faces else None)
    return out


def analysed_jitter(
    analyser: FaceAnalyser, frames: Sequence[np.ndarray], *, largest_only: bool = True
) -> float:
    """`landmark_jitter` of plain per-frame analysis: how steady a face looks to an outside observer.

    Compare it on swapped output frames against the original frames: the swap should add no shake.
    """
    return landmark_jitter(analysed_landmarks(analyser, frames, largest_only=largest_only))
