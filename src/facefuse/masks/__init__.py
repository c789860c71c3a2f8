"""Masks: where a swapped face may show. Float32 arrays in [0, 1], combinable by multiplication."""

from facefuse.masks.region import depth, feather, fill_polygon, mouth_interior, ramp_in, smooth_ramp

__all__ = ["depth", "feather", "fill_polygon", "mouth_interior", "ramp_in", "smooth_ramp"]
