"""The one type every room passes around: a face found in an image, with all we know about it."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
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
    sharpness: float  # fine-detail energy at a common face size; higher is sharper
    # (height, width) of the picture the face is in: the head pose is fitted with a camera of that size.
    image_size: tuple[int, int]
    descriptor: np.ndarray | None = field(default=None, repr=False)  # (128,) float32
    # What swappers learned about this face in a stream's earlier frames (its track's, shared by every
    # frame's Face of that track); None for a face seen once, as in a still image.
    memory: dict | None = field(default=None, repr=False, compare=False)
    _pose: Pose | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def pose(self) -> Pose:
        """Rough head pose, fitted on first use: a video's tracked faces never pay for it unless asked."""
        if self._pose is None:
            self._pose = head_pose(self.landmarks_68, self.image_size)
        return self._pose

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


# A generic head (mm) for the six points solvePnP needs, with y down and z away from the camera so a
# frontal face comes out with zero angles: nose tip, chin, outer eye corners, mouth corners.
_HEAD_3D = np.array(
    [(0, 0, 0), (0, 330, 65), (-225, -170, 135), (225, -170, 135), (-150, 150, 125), (150, 150, 125)],
    np.float64,
)
_HEAD_IDX = [30, 8, 36, 45, 48, 54]


def head_pose(points: np.ndarray, image_shape: tuple[int, ...]) -> Pose:
    """Yaw, pitch and roll (degrees) from a perspective fit of a generic head to six landmarks."""
    h, w = image_shape[:2]
    focal = float(max(h, w))
    camera = np.array([[focal, 0, w / 2], [0, focal, h / 2], [0, 0, 1]], np.float64)
    image_pts = np.asarray(points, np.float64)[_HEAD_IDX]
    ok, rvec, _ = cv2.solvePnP(_HEAD_3D, image_pts, camera, None, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return Pose(0.0, 0.0, _roll(points))
    rot, _ = cv2.Rodrigues(rvec)
    angles = cv2.RQDecomp3x3(rot)[0]
    pitch, yaw = (float((a + 180) % 360 - 180) for a in angles[:2])
    return Pose(yaw=float(np.clip(yaw, -90, 90)), pitch=float(np.clip(pitch, -90, 90)), roll=_roll(points))


def _roll(points: np.ndarray) -> float:
    d = np.asarray(points)[45] - np.asarray(points)[36]
    return float(np.degrees(np.arctan2(d[1], d[0])))
