"""Pipeline: the library entry point. Holds loaded models; turns sources and a target into an output.

>>> from facefuse import Pipeline
>>> pipe = Pipeline()                       # models load once, here
>>> out = pipe.swap_image("me.jpg", "group.jpg")   # paths or RGB uint8 arrays
>>> result = pipe.run(pipe.source(["me.jpg"]), target_rgb, Selection(mode=Mode.MANY))
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from facefuse.analysis import DetectorSettings, Face, FaceAnalyser
from facefuse.analysis.recognise import SAME_PERSON, mean_descriptor
from facefuse.analysis.select import Mode, Selection, assign_people, select_faces
from facefuse.errors import NoMatch, NoSourceFace, NoTargetFace
from facefuse.media import read_image
from facefuse.media.image import DEFAULT_MAX_PIXELS
from facefuse.models.sessions import SessionPool
from facefuse.swap import MeshSettings, MeshSwapper, SourceFace, Swapper
from facefuse.swap.guard import IdentityCheck, IdentityGuard
from facefuse.zoo import ModelChoice, Zoo

ImageLike = str | Path | np.ndarray


class Enhancer(Protocol):
    name: str

    def enhance(self, frame: np.ndarray, face: Face) -> np.ndarray: ...


@dataclass
class Identity:
    """A person to swap in: the best of their source faces, prepared for the swapper.

    With several photos the sharpest, most frontal face supplies the pixels and every photo's
    descriptor goes into the average used for matching.
    """

    prepared: SourceFace
    faces: list[Face]
    descriptor: np.ndarray | None = None

    @property
    def face(self) -> Face:
        return self.prepared.face


@dataclass
class Timings:
    """Milliseconds per stage, summed over calls."""

    ms: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + 1000 * (time.perf_counter() - t0)

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in self.ms.items()}


@dataclass
class SwapResult:
    image: np.ndarray
    faces_found: int
    faces_swapped: int
    swapped: list[Face]
    timings: Timings
    # One per swapped face, in the order swapped, when the identity check ran (swap.guard).
    identity_checks: list[IdentityCheck] = field(default_factory=list)

    def summary(self) -> dict:
        out = {
            "faces_found": self.faces_found,
            "faces_swapped": self.faces_swapped,
            "faces_unchanged": self.faces_found - self.faces_swapped,
            "swapped_boxes": [[round(float(v), 1) for v in f.box] for f in self.swapped],
            "stages_ms": self.timings.rounded(),
        }
        if self.identity_checks:
            out["identity_checks"] = [c.summary() for c in self.identity_checks]
        return out


class Pipeline:
    """Loaded models plus the few settings that shape them; reuse one across many images."""

    def __init__(
        self,
        *,
        swapper: Swapper | None = None,
        detector: DetectorSettings | None = None,
        mesh: MeshSettings | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        models: ModelChoice | None = None,
        pool: SessionPool | None = None,
        enhancer: Enhancer | None = None,
        identity_check: bool = True,
    ) -> None:
        """`models` picks learned models by name (see facefuse.zoo.ModelChoice), opened through `pool`
        (default: a CPU pool over the default models folder); `swapper` and `enhancer` objects, when
        given, take the place of the chosen ones. `identity_check` lets the mesh swapper redo a face
        at another strength when the recogniser still reads it as the target's person (swap.guard)."""
        self.models = models or ModelChoice()
        if self.models.learned and pool is None:
            from facefuse.models import ModelStore, default_models_dir, default_registry

            pool = SessionPool(ModelStore(default_registry(), default_models_dir()))
        self.pool = pool
        if pool is None:
            self.analyser = FaceAnalyser(detector)
            self.swapper: Swapper = swapper or MeshSwapper(mesh)
            self.enhancer = enhancer
        else:
            zoo = Zoo(pool, self.models)
            recogniser = zoo.recogniser()
            self.analyser = FaceAnalyser(
                zoo.detector(detector), landmarker=zoo.landmarker(), recogniser=recogniser
            )
            self.swapper = swapper or zoo.swapper(recogniser, mesh)
            self.enhancer = enhancer if enhancer is not None else zoo.enhancer()
        self.max_pixels = max_pixels
        self.guard = (
            IdentityGuard(self.swapper, self.analyser)
            if identity_check and isinstance(self.swapper, MeshSwapper)
            else None
        )

    def swap_face(self, frame: np.ndarray, face: Face, source: Identity) -> np.ndarray:
        """One face swapped, then restored when an enhancer is chosen."""
        return self._swap_checked(frame, face, source)[0]

    def _swap_checked(
        self, frame: np.ndarray, face: Face, source: Identity
    ) -> tuple[np.ndarray, IdentityCheck | None]:
        check = None
        if self.guard is not None and source.descriptor is not None:
            out, check = self.guard.swap(frame, face, source.prepared, source.descriptor)
        else:
            out = self.swapper.swap(frame, face, source.prepared)
        if self.enhancer is not None:
            out = self.enhancer.enhance(out, face)
        return out, check

    def load(self, image: ImageLike) -> np.ndarray:
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError("images must be RGB uint8 arrays of shape (H, W, 3)")
            return image
        return read_image(image, max_pixels=self.max_pixels)

    def source(
        self, images: ImageLike | Sequence[ImageLike], *, descriptors: bool = False, role: str = "source"
    ) -> Identity:
        """Build an identity from one or more photos of the person to swap in."""
        items = [images] if isinstance(images, str | Path | np.ndarray) else list(images)
        # The identity check measures every swap against the source's descriptor.
        descriptors = descriptors or self.guard is not None
        found: list[tuple[np.ndarray, Face]] = []
        for item in items:
            rgb = self.load(item)
            faces = self.analyser.analyse(rgb, largest_only=True, descriptors=descriptors)
            if not faces:
                name = item if not isinstance(item, np.ndarray) else f"{role} image"
                raise NoSourceFace(f"{name}: no face found in the {role} photo")
            found.append((rgb, faces[0]))
        rgb, best = max(found, key=lambda pair: pair[1].quality)
        ident = Identity(prepared=self.swapper.prepare(rgb, best), faces=[f for _, f in found])
        if descriptors:
            ident.descriptor = mean_descriptor([f.descriptor for _, f in found])
        return ident

    def reference(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """The averaged descriptor of the person in one or more reference photos."""
        return self.source(images, descriptors=True, role="reference").descriptor

    def run(
        self,
        source: Identity | None,
        target: np.ndarray,
        selection: Selection | None = None,
        *,
        reference: np.ndarray | None = None,
        people: Sequence[tuple[Identity, np.ndarray]] = (),
        timings: Timings | None = None,
    ) -> SwapResult:
        """Swap into one RGB frame.

        `people` pairs a source identity with the descriptor of the target person it replaces; those
        faces are claimed first, and `source` (if given) then goes to the remaining faces chosen by
        `selection`.
        """
        selection = (selection or Selection()).resolved(self.analyser.same_person)
        timings = timings or Timings()
        needs_identity = bool(people) or selection.mode is Mode.REFERENCE
        with timings.stage("analyse"):
            faces = self.analyser.analyse(
                target, largest_only=not (selection.needs_all_faces or people), descriptors=needs_identity
            )
        plan: list[tuple[Face, Identity]] = []
        with timings.stage("select"):
            if people:
                claims = assign_people(faces, [ref for _, ref in people], selection.reference_distance)
                plan += [(face, people[i][0]) for face, i in claims]
            if source is not None:
                rest = [f for f in faces if all(f is not claimed for claimed, _ in plan)]
                plan += [(f, source) for f in select_faces(rest, selection, reference)]
        out = target
        checks: list[IdentityCheck] = []
        with timings.stage("swap"):
            for face, ident in plan:
                out, check = self._swap_checked(out, face, ident)
                if check is not None:
                    checks.append(check)
        return SwapResult(out, len(faces), len(plan), [f for f, _ in plan], timings, checks)

    def swap_image(
        self,
        source: ImageLike | Sequence[ImageLike] | Identity,
        target: ImageLike,
        selection: Selection | None = None,
        *,
        reference: ImageLike | Sequence[ImageLike] | None = None,
    ) -> np.ndarray:
        """Convenience for notebooks: the swapped image, or an error if nothing could be swapped."""
        ident = source if isinstance(source, Identity) else self.source(source)
        ref = self.reference(reference) if reference is not None else None
        result = self.run(ident, self.load(target), selection, reference=ref)
        name = str(target) if not isinstance(target, np.ndarray) else "target image"
        check_result(result, (selection or Selection()).resolved(self.analyser.same_person), name)
        return result.image


def check_result(result: SwapResult, selection: Selection, target_name: str = "target image") -> None:
    """Raise the error that explains an image where nothing was swapped."""
    if result.faces_found == 0:
        raise NoTargetFace(f"{target_name}: no face found in the target")
    if result.faces_swapped == 0:
        if selection.mode is Mode.REFERENCE:
            raise NoMatch(
                f"{target_name}: no face is within {selection.reference_distance} of the reference face "
                "(raise --reference-distance to match more loosely)"
            )
        raise NoMatch(
            f"{target_name}: none of its {result.faces_found} face(s) was selected "
            "(check --index and the --map reference photos)"
        )


__all__ = ["SAME_PERSON", "Identity", "Pipeline", "SwapResult", "Timings", "check_result"]
