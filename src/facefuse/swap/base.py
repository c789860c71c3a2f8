"""The swapper interface every swapper (built-in mesh, learned models) implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from facefuse.analysis.face import Face


@dataclass
class SourceFace:
    """A source identity made ready for one swapper: whatever it needs, computed once, reused per frame."""

    face: Face  # in the coordinates of the image it came from
    image: np.ndarray  # RGB uint8: the source image, or a crop of it around the face
    origin: np.ndarray  # (x, y) of `image`'s top-left corner in the original source image
    descriptor: np.ndarray | None = None  # the identity to match or report against
    latent: np.ndarray | None = None  # a learned swapper's identity input (e.g. inswapper's emap latent)
    # `image` and its area-halved copies (the mesh swapper shrinks big sources from the nearest one).
    pyramid: tuple[np.ndarray, ...] = ()
    # float32 over `image`, 1 where something covers the source face (its hair) and the target must
    # show through instead; None when nothing does.
    hidden: np.ndarray | None = None


class Swapper(Protocol):
    name: str
    # IPTC digital source type for outputs this swapper makes (see media.labels).
    digital_source_type: str

    def prepare(self, image: np.ndarray, face: Face) -> SourceFace: ...

    def swap(self, frame: np.ndarray, target: Face, source: SourceFace) -> np.ndarray:
        """Return a new frame with `source` carried onto `target`; pixels outside the face are unchanged."""
        ...
