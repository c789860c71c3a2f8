"""Swappers: carry a source identity onto a target face."""

from facefuse.swap.base import SourceFace, Swapper
from facefuse.swap.mesh import MeshSettings, MeshSwapper

__all__ = ["MeshSettings", "MeshSwapper", "SourceFace", "Swapper"]
