"""The built-in, offline model stack: dlib's HOG detector plus the weights in face-recognition-models.

Nothing here downloads: every file comes from an installed package. dlib's 68-point model is trained on
iBUG 300-W, which is licensed for non-commercial use (see NOTICE.md).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from facefuse.errors import FacefuseError


@dataclass(frozen=True)
class BuiltinPaths:
    landmarks_68: Path
    landmarks_5: Path
    recognition: Path


def builtin_paths() -> BuiltinPaths:
    try:
        with warnings.catch_warnings():
            # face_recognition_models still imports pkg_resources and warns about it on every import.
            warnings.simplefilter("ignore")
            import face_recognition_models as frm
    except ImportError as exc:  # pragma: no cover - only on a broken install
        raise FacefuseError(
            "the built-in models are missing: pip install face-recognition-models 'setuptools<82'"
        ) from exc
    return BuiltinPaths(
        landmarks_68=Path(frm.pose_predictor_model_location()),
        landmarks_5=Path(frm.pose_predictor_five_point_model_location()),
        recognition=Path(frm.face_recognition_model_location()),
    )
