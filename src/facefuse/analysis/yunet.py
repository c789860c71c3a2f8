"""YuNet (OpenCV Zoo face_detection_yunet_2023mar): an anchor-free detector with 5 keypoints.

Input 'input' [1,3,H,W]: the image letterboxed (top-left, zero padding) into a size divisible by
32, BGR, raw 0..255. Outputs per stride s in (8, 16, 32): cls_s, obj_s (N,1), bbox_s (N,4),
kps_s (N,10), where N = (H/s)(W/s) cells, row-major. Decoding (OpenCV FaceDetectorYN): score =
sqrt(clip(cls) clip(obj)); centre ((col + b0) s, (row + b1) s); size (exp(b2) s, exp(b3) s);
keypoint n at ((col + k_2n) s, (row + k_2n+1) s). Score >= 0.5, then NMS at IoU 0.3.
"""

from __future__ import annotations

import numpy as np

from facefuse.analysis.detect import Detection
from facefuse.analysis.scrfd import FittedDetector, letterbox, to_detections
from facefuse.models.onnx_io import SessionLike, TensorSpec, bind_inputs, check_outputs

STRIDES = (8, 16, 32)
KINDS = ("cls", "obj", "bbox", "kps")


class YuNetDetector(FittedDetector):
    def __init__(
        self,
        session: SessionLike,
        *,
        size: int = 640,
        threshold: float = 0.5,
        iou: float = 0.3,
        name: str = "yunet",
    ) -> None:
        self.name = name
        port = bind_inputs(session, name, {"input": TensorSpec((None, 3, None, None))})["input"]
        outs = check_outputs(session, name, 12)
        self.session = session
        self._input = port.name
        self.height = port.shape[2] or (size + 31) // 32 * 32
        self.width = port.shape[3] or (size + 31) // 32 * 32
        names = [o.name for o in outs]
        wanted = [f"{k}_{s}" for k in KINDS for s in STRIDES]
        # Index by name where the export names them as OpenCV's does, by position (same order) otherwise.
        self._order = [names.index(n) for n in wanted] if set(wanted) <= set(names) else list(range(12))
        self.threshold = threshold
        self.iou = iou

    def run(self, image: np.ndarray, scale: float = 1.0, threshold: float | None = None) -> list[Detection]:
        """Faces in an RGB uint8 image. `scale` is ignored: the image is always fitted to the input."""
        threshold = self.threshold if threshold is None else threshold
        canvas, det_scale = letterbox(image, self.width, self.height)
        x = canvas[..., ::-1].astype(np.float32).transpose(2, 0, 1)[None]
        raw = self.session.run(None, {self._input: np.ascontiguousarray(x)})
        outs = [np.asarray(raw[i], np.float32) for i in self._order]
        boxes, scores, kps = [], [], []
        for j, s in enumerate(STRIDES):
            cls, obj, bbox, kp = (outs[k * 3 + j].reshape(-1, n) for k, n in enumerate((1, 1, 4, 10)))
            score = np.sqrt(np.clip(cls[:, 0], 0, 1) * np.clip(obj[:, 0], 0, 1))
            keep = np.flatnonzero(score >= threshold)
            if keep.size == 0:
                continue
            cols = self.width // s
            cell = np.stack([keep % cols, keep // cols], axis=1).astype(np.float32)
            b = bbox[keep]
            centre = (cell + b[:, :2]) * s
            size = np.exp(b[:, 2:]) * s
            boxes.append(np.concatenate([centre - size / 2, centre + size / 2], axis=1))
            scores.append(score[keep])
            kps.append(((kp[keep].reshape(-1, 5, 2) + cell[:, None, :]) * s).reshape(-1, 10))
        if not boxes:
            return []
        return to_detections(
            np.concatenate(boxes) / det_scale,
            np.concatenate(scores),
            np.concatenate(kps) / det_scale,
            self.iou,
        )
