"""Face analysis: detect, landmarks, recognise, select."""

from facefuse.analysis.analyser import FaceAnalyser
from facefuse.analysis.detect import DetectorSettings
from facefuse.analysis.face import Face, Pose

__all__ = ["DetectorSettings", "Face", "FaceAnalyser", "Pose"]
