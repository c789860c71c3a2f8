"""Which target faces to replace, and with whom.

Modes: `one` (a single face: the first after ordering, the largest by default), `many` (every face),
`reference` (faces whose descriptor lies within a distance of a reference person). Per-person maps
give each recognised person their own source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np

from facefuse.analysis.face import Face


class Mode(StrEnum):
    ONE = "one"
    MANY = "many"
    REFERENCE = "reference"


class Order(StrEnum):
    LARGE_SMALL = "large-small"
    SMALL_LARGE = "small-large"
    LEFT_RIGHT = "left-right"
    RIGHT_LEFT = "right-left"
    TOP_BOTTOM = "top-bottom"
    BOTTOM_TOP = "bottom-top"
    BEST_WORST = "best-worst"
    WORST_BEST = "worst-best"


_KEYS = {
    Order.LARGE_SMALL: lambda f: -f.area,
    Order.SMALL_LARGE: lambda f: f.area,
    Order.LEFT_RIGHT: lambda f: f.centre[0],
    Order.RIGHT_LEFT: lambda f: -f.centre[0],
    Order.TOP_BOTTOM: lambda f: f.centre[1],
    Order.BOTTOM_TOP: lambda f: -f.centre[1],
    Order.BEST_WORST: lambda f: -f.score,
    Order.WORST_BEST: lambda f: f.score,
}


def order_faces(faces: Sequence[Face], order: Order) -> list[Face]:
    return sorted(faces, key=_KEYS[Order(order)])


@dataclass(frozen=True)
class Selection:
    mode: Mode = Mode.ONE
    order: Order = Order.LARGE_SMALL
    index: int | None = None  # pick one face by position after ordering (negative counts from the end)
    # Descriptor distance under which a face is the reference person. None: the recogniser's own
    # (0.6 for dlib's 128-D descriptors, 1.10 for ArcFace's unit 512-D ones); Pipeline fills it in.
    reference_distance: float | None = None

    def resolved(self, same_person: float) -> Selection:
        return self if self.reference_distance is not None else replace(self, reference_distance=same_person)

    @property
    def needs_all_faces(self) -> bool:
        return self.mode is not Mode.ONE or self.order is not Order.LARGE_SMALL or bool(self.index)


def select_faces(
    faces: Sequence[Face], selection: Selection, reference: np.ndarray | None = None
) -> list[Face]:
    """The faces to replace, in order. `reference` (a descriptor) is required in reference mode."""
    ordered = order_faces(faces, selection.order)
    if selection.mode is Mode.REFERENCE:
        if reference is None:
            raise ValueError("reference mode needs a reference descriptor")
        limit = selection.reference_distance if selection.reference_distance is not None else 0.6
        ordered = [f for f in ordered if f.distance(reference) <= limit]
    if selection.index is not None:
        i = selection.index
        return [ordered[i]] if -len(ordered) <= i < len(ordered) else []
    if selection.mode is Mode.ONE:
        return ordered[:1]
    return ordered


def assign_people(
    faces: Sequence[Face], references: Sequence[np.ndarray], max_distance: float
) -> list[tuple[Face, int]]:
    """Pair target faces with people: each face goes to its nearest reference within `max_distance`.

    Each person is given to one face at most (the closest), so two lookalikes in one photo do not
    both become the same source; faces nobody claims are left out.
    """
    if not faces or not references:
        return []
    dist = np.array([[f.distance(r) for r in references] for f in faces])
    pairs: list[tuple[Face, int]] = []
    taken_faces: set[int] = set()
    taken_people: set[int] = set()
    for flat in np.argsort(dist, axis=None):
        fi, pi = np.unravel_index(flat, dist.shape)
        if dist[fi, pi] > max_distance:
            break
        if fi in taken_faces or pi in taken_people:
            continue
        taken_faces.add(int(fi))
        taken_people.add(int(pi))
        pairs.append((faces[fi], int(pi)))
    return pairs
