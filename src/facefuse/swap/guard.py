"""The identity check: the recogniser reads each new face, and a mesh swap that still reads as the
target's person is redone at another strength.

Why: a mesh swap keeps the target's jaw line, hair and head and takes on its light, so on some pairs
(a woman's face onto a bearded man, a soft source onto a crisp target) the face a recogniser sees is
still the target's. Carrying more of the source (its shading, brows and eyes) fixes those pairs but
moves what a landmark model reads away from the target's expression, and most pairs do not need it:
which strength a pair needs differs from pair to pair. So each face is swapped at the weakest level
of `identity_levels` whose output the recogniser puts nearer the source than the target by a margin
(the weakest keeps the target's expression best). When no level gets there, the level with the best
margin, less a penalty for how far its landmarks drift from the target's, is kept.

In a stream the level is chosen on a track's first frame and kept for the rest of it (its memory):
the check costs a few swaps and descriptors, and a face whose strength changed between frames would
flicker. There it is only ever made stronger: one frame's room to spare is no promise for the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from facefuse.analysis.analyser import FaceAnalyser
from facefuse.analysis.face import Face
from facefuse.analysis.landmarks import detector_box
from facefuse.geometry import five_from_68
from facefuse.swap.base import SourceFace
from facefuse.swap.mesh import BASE_LEVEL, MeshSwapper, identity_levels, nose_share

# Distance to the target minus distance to the source, on the dlib descriptor's scale (scaled to the
# recogniser in use by its same-person distance). Above zero the output already reads as the source;
# the margin leaves room for the photos of a person differing among themselves.
MARGIN = 0.05
# Margin given up per eye distance of landmark drift, when no level reaches MARGIN.
DRIFT_WEIGHT = 10.0
# A level that moves the nose is kept only where its landmarks drift at most this much (eye
# distances) further than the strongest level that leaves the nose alone: the nose reads as the
# source's on faces whose shape takes it almost free, and on the rest it cost every set landmark error
# (a face already nearer the source took it for margin alone).
NOSE_DRIFT = 0.002
_DLIB_SAME_PERSON = 0.6


@dataclass(frozen=True)
class IdentityCheck:
    """What the check found for one face."""

    strength: int  # the chosen level, relative to the settings as given (negative: weaker)
    margin: float  # the output's distance to the target minus its distance to the source
    drift: float  # mean distance of the output's 68 landmarks from the target's, in eye distances
    tries: int  # swaps made to choose

    def summary(self) -> dict:
        return {
            "strength": self.strength,
            "margin": round(self.margin, 3),
            "landmark_drift": round(self.drift, 4),
            "tries": self.tries,
        }


class IdentityGuard:
    """A mesh swapper at every identity level, and the analysis models that read the results."""

    def __init__(self, swapper: MeshSwapper, analyser: FaceAnalyser) -> None:
        self.analyser = analyser
        levels = identity_levels(swapper.settings)
        self.swappers = [swapper.with_settings(st) for st in levels]
        # The first level that moves the nose further than the settings as given.
        self.first_nose = next(
            (k for k, st in enumerate(levels) if st.nose > swapper.settings.nose), len(levels)
        )

    def swap(
        self, frame: np.ndarray, face: Face, source: SourceFace, source_descriptor: np.ndarray
    ) -> tuple[np.ndarray, IdentityCheck | None]:
        """The swapped frame and what the check found (None where a track's earlier frame chose)."""
        memory = face.memory
        if memory is not None and "identity_level" in memory:
            return self.swappers[memory["identity_level"]].swap(frame, face, source), None
        scale = self.analyser.same_person / _DLIB_SAME_PERSON
        target = self.analyser.describe(frame, face)
        own = self._landmarks(frame, face)
        iod = max(face.eye_distance, 1.0)
        tried: dict[int, tuple[np.ndarray, float, float]] = {}

        def passes(level: int) -> bool:
            out = self.swappers[level].swap(frame, face, source)
            points = self._landmarks(out, face)
            seen = replace(face, landmarks_68=points, landmarks_5=five_from_68(points), descriptor=None)
            desc = self.analyser.recogniser.describe(out, seen)
            margin = float(np.linalg.norm(desc - target) - np.linalg.norm(desc - source_descriptor)) / scale
            drift = float(np.linalg.norm(points - own, axis=1).mean()) / iod
            tried[level] = (out, margin, drift)
            return margin >= MARGIN and cheap(level)

        def cheap(level: int) -> bool:
            if level < self.first_nose:
                return True
            return tried[level][2] <= tried[self.first_nose - 1][2] + NOSE_DRIFT

        # A track keeps its first frame's choice through turns and expressions that frame never
        # showed, so it is never made weaker than the settings as given, only stronger.
        weakest = 0 if memory is None else BASE_LEVEL
        level = BASE_LEVEL
        if passes(level):
            while level > weakest and passes(level - 1):
                level -= 1
        else:
            # Heads turned too differently for any of the nose to carry: those levels would only
            # swap the strongest one's face again.
            top = len(self.swappers) if nose_share(face, source.face) > 0 else self.first_nose
            stronger = range(BASE_LEVEL + 1, top)
            level = next((k for k in stronger if passes(k)), -1)
            if level < 0:
                # Nothing reads as the source: weaker levels may still lose less than they drift.
                for weaker in range(weakest, BASE_LEVEL):
                    passes(weaker)
                kept = [k for k in tried if cheap(k)]
                level = max(kept, key=lambda k: tried[k][1] - DRIFT_WEIGHT * tried[k][2])
        if memory is not None:
            memory["identity_level"] = level
        out, margin, drift = tried[level]
        return out, IdentityCheck(level - BASE_LEVEL, margin, drift, len(tried))

    def _landmarks(self, image: np.ndarray, face: Face) -> np.ndarray:
        # Refitted from one box for the output and the target alike: the box dlib's detector would
        # most likely give this face. The detection's own box can sit off (a coarse pass scaled up),
        # and the shape predictor's jaw then moved three times as much between the two as a fresh
        # detection on each shows.
        points, _ = self.analyser.landmarks.fit(np.ascontiguousarray(image), detector_box(face.landmarks_68))
        return np.asarray(points, np.float32)
