"""SCRFD face detectors (InsightFace det_10g / 2.5g / 500m, with 5 keypoints).

The image is letterboxed into the model's input (default 640 x 640): scaled to fit, pasted at the
top-left of a zero canvas. RGB, (x - 127.5) / 128, NCHW. Outputs, by position: the scores of each
stride, then the box distances, then (if present) the keypoint offsets; per stride s an anchor sits
at each cell's top-left corner (col s, row s), twice in a row for the 3-stride models. Scores have
the sigmoid applied already. Boxes are (cx - d0 s, cy - d1 s, cx + d2 s, cy + d3 s), keypoints
(cx + k s, cy + k' s). Score >= 0.5, then greedy NMS at IoU 0.4.
"""

from __future__ import annotations

import cv2
import numpy as np

from facefuse.analysis.detect import Detection
from facefuse.models.onnx_io import SessionLike, TensorSpec, bind_inputs, check_outputs


def letterbox(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, float]:
    """`image` scaled to fit (width, height) at the top-left of a zero canvas, and the scale used."""
    h, w = image.shape[:2]
    if h / w > height / width:
        new_h, new_w = height, max(1, int(height * w / h))
    else:
        new_w, new_h = width, max(1, int(width * h / w))
    scale = new_h / h
    canvas = np.zeros((height, width, 3), np.uint8)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=interp)
    return canvas, scale


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression (areas with +1, as InsightFace); indices kept, best first."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][overlap <= iou]
    return np.array(keep, np.int64)


def anchor_centres(height: int, width: int, stride: int, per_cell: int) -> np.ndarray:
    """(H/s * W/s * per_cell, 2) anchor centres, row-major, each repeated `per_cell` times in a row."""
    ys, xs = np.mgrid[: height // stride, : width // stride]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, per_cell, axis=0)


def to_detections(
    boxes: np.ndarray, scores: np.ndarray, kps: np.ndarray | None, iou: float
) -> list[Detection]:
    keep = nms(boxes, scores, iou)
    return [
        Detection(
            box=boxes[i].astype(np.float32),
            score=float(scores[i]),
            landmarks_5=None if kps is None else kps[i].reshape(5, 2).astype(np.float32),
        )
        for i in keep
    ]


class FittedDetector:
    """`detect` for learned detectors that always fit the whole image to their input: one pass, so
    there is no coarse-first shortcut for the largest face; `run` is the subclass's."""

    lenient = 0.3  # score threshold for the tracker's crop check, where a face is expected
    takes_grey = False

    def run(self, image: np.ndarray, scale: float = 1.0, threshold: float | None = None) -> list[Detection]:
        raise NotImplementedError

    def detect(self, image: np.ndarray, largest_only: bool = False) -> list[Detection]:
        found = self.run(image, 1.0)
        if largest_only and found:
            found = [max(found, key=lambda d: float((d.box[2] - d.box[0]) * (d.box[3] - d.box[1])))]
        return found


class ScrfdDetector(FittedDetector):
    def __init__(
        self,
        session: SessionLike,
        *,
        size: int = 640,
        threshold: float = 0.5,
        iou: float = 0.4,
        name: str = "scrfd",
    ) -> None:
        self.name = name
        port = bind_inputs(
            session, name, {"input": TensorSpec((None, 3, None, None))}, {"input": ("input.1",)}
        )["input"]
        n_out = len(check_outputs(session, name, (6, 9, 10, 15)))
        self.session = session
        self._input = port.name
        # A fixed-size export dictates its own input; a dynamic one gets `size`.
        self.height = port.shape[2] or size
        self.width = port.shape[3] or size
        self.levels = 3 if n_out in (6, 9) else 5
        self.strides = [8, 16, 32, 64, 128][: self.levels]
        self.per_cell = 2 if self.levels == 3 else 1
        self.has_kps = n_out in (9, 15)
        self.threshold = threshold
        self.iou = iou

    def run(self, image: np.ndarray, scale: float = 1.0, threshold: float | None = None) -> list[Detection]:
        """Faces in an RGB uint8 image. `scale` is ignored: the image is always fitted to the input."""
        threshold = self.threshold if threshold is None else threshold
        canvas, det_scale = letterbox(image, self.width, self.height)
        x = ((canvas.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outs = [np.asarray(o, np.float32) for o in self.session.run(None, {self._input: x})]
        outs = [o[0] if o.ndim == 3 else o for o in outs]
        boxes, scores, kps = [], [], []
        for i, s in enumerate(self.strides):
            centres = anchor_centres(self.height, self.width, s, self.per_cell)
            score = outs[i].reshape(-1)
            keep = np.flatnonzero(score >= threshold)
            if keep.size == 0:
                continue
            d = outs[i + self.levels].reshape(-1, 4)[keep] * s
            c = centres[keep]
            boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
            scores.append(score[keep])
            if self.has_kps:
                k = outs[i + 2 * self.levels].reshape(-1, 10)[keep] * s
                kps.append((k.reshape(-1, 5, 2) + c[:, None, :]).reshape(-1, 10))
        if not boxes:
            return []
        return to_detections(
            np.concatenate(boxes) / det_scale,
            np.concatenate(scores),
            np.concatenate(kps) / det_scale if kps else None,
            self.iou,
        )
