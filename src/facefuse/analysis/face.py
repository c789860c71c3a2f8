"""The one type every room passes around: a face found in an image, with all we know about it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Pose:
    """Rough head pose in degrees: yaw (left/right turn), pitch (nod), roll (tilt in the image plane)."""

    yaw: float
    pitch: float
    roll: float

    @property
    def frontality(self) -> float:
        """1 for a face looking straight at the camera, falling towards 0 at profile."""
        return float(
            np.cos(np.radians(min(abs(self.yaw), 90))) * np.cos(np.radians(min(abs(self.pitch), 90)))
        )


@dataclass
class Face:
    """A detected face in image coordinates.

    `descriptor` is filled only when something needs identity (selection by reference, the summary's
    identity report): computing it costs ~70 ms a face on a CPU, far more than the rest.
    """

    box: np.ndarray  # x0, y0, x1, y1 (float32)
    score: float  # detector confidence (dlib SVM margin; > 0 means a face)
    landmarks_68: np.ndarray  # (68, 2) float32
    landmarks_5: np.ndarray  # (5, 2) float32: eye centres, nose tip, mouth corners
    pose: Pose
    sharpness: float  # fine-detail energy at a common face size; higher is sharper
    descriptor: np.ndarray | None = field(default=None, repr=False)  # (128,) float32

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def centre(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2], np.float32)

    @property
    def eye_distance(self) -> float:
        """Outer-eye-corner distance: the face's own unit of length."""
        return float(np.linalg.norm(self.landmarks_68[45] - self.landmarks_68[36]))

    @property
    def quality(self) -> float:
        """How good a face is as a source: sharp and facing the camera."""
        return float(self.sharpness * self.pose.frontality)

    def distance(self, other: np.ndarray) -> float:
        """Descriptor distance to another descriptor (dlib's scale: < 0.6 usually the same person)."""
        if self.descriptor is None:
            raise ValueError("face has no descriptor; analyse it with descriptors on")
        return float(np.linalg.norm(self.descriptor - other))
