"""Faces of several consecutive frames through one model call (learned swappers in video).

A tiny inswapper-shaped model that inverts its crop (tests/zoo_onnx.py) makes every swap visible and
tied to its own frame's pixels, so a face pasted into the wrong frame, or a frame skipped, shows.
Batched and one-frame-at-a-time runs must give the same pixels, frames without a face untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zoo_onnx as z
from cli_helpers import assert_one_line_error, run_cli
from conftest import MEDIA
from test_video import decode_all, make_video, photo

from facefuse.analysis.select import Mode, Selection
from facefuse.errors import ExitCode
from facefuse.media import video as media
from facefuse.models import ModelStore, SessionPool, default_registry
from facefuse.pipeline import Pipeline
from facefuse.stream import FrameSwapper
from facefuse.video import VideoJob, VideoOptions
from facefuse.zoo import ModelChoice

ONE = MEDIA / "images" / "obama-480p.jpg"
TWO = MEDIA / "images" / "two_people.jpg"
DOGS = MEDIA / "groups" / "dogs_no_faces.jpg"
SOURCE = MEDIA / "images" / "biden.jpg"


class Recording:
    """Wraps the swapper's network and notes the batch size of every call."""

    def __init__(self, net) -> None:
        self.net, self.sizes = net, []

    def run(self, target: np.ndarray, latent: np.ndarray) -> np.ndarray:
        self.sizes.append(len(target))
        return self.net.run(target, latent)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> Pipeline:
    folder = tmp_path_factory.mktemp("batch-models")
    rng = np.random.default_rng(5)
    paths = {
        "inswapper_128": z.save(z.inswapper(rng.normal(size=(512, 512)), invert=True), folder / "insw.onnx"),
        "arcface_w600k_r50": z.save(z.arcface(rng.normal(size=(3, 512))), folder / "arc.onnx"),
    }
    store = ModelStore(default_registry(), folder, overrides=paths, verify=False)
    p = Pipeline(models=ModelChoice(swapper="inswapper_128"), pool=SessionPool(store))
    p.swapper.net = Recording(p.swapper.net)
    return p


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """One face drifting, two frames of dogs (no face), two faces at once, the one face again."""
    one, two, dogs = photo(ONE), photo(TWO), photo(DOGS)
    return (
        [np.roll(one, 2 * i, axis=1) for i in range(5)]
        + [dogs, np.roll(dogs, 3, axis=1)]
        + [np.roll(two, i, axis=1) for i in range(3)]
        + [np.roll(one, -i, axis=1) for i in range(2)]
    )


def test_process_batch_matches_frame_by_frame(pipe: Pipeline, frames: list[np.ndarray]) -> None:
    source = pipe.source(SOURCE)
    selection = Selection(mode=Mode.MANY)
    single = FrameSwapper(pipe, source, selection)
    pipe.swapper.net.sizes.clear()
    expected = [single.process(f, i / 30) for i, f in enumerate(frames)]
    assert set(pipe.swapper.net.sizes) == {1}
    assert [r.faces_swapped for r in expected] == [1] * 5 + [0, 0] + [2] * 3 + [1] * 2

    batched = FrameSwapper(pipe, source, selection, batch_frames=8)
    assert batched.batch_frames == 8
    pipe.swapper.net.sizes.clear()
    got = batched.process_batch([(f, i / 30) for i, f in enumerate(frames[:8])])
    got += batched.process_batch([(f, i / 30) for i, f in enumerate(frames[8:], start=8)])
    # Window 1 (frames 0-7): round 1 holds the first face of the 6 frames with faces, round 2 the
    # second face of frame 7; window 2 (frames 8-11): 4 first faces, then 2 second faces.
    assert pipe.swapper.net.sizes == [6, 1, 4, 2]
    for i, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert np.array_equal(a.image, b.image), i
        assert (a.faces_found, a.faces_swapped, a.track_ids) == (b.faces_found, b.faces_swapped, b.track_ids)
    for i in (5, 6):
        assert got[i].image is frames[i]  # no face: the frame itself passes through
    for i in (0, 7):
        assert np.abs(got[i].image.astype(int) - frames[i].astype(int)).max() > 100  # the face was swapped


def test_mesh_swapper_never_batches() -> None:
    assert FrameSwapper(Pipeline(), None, batch_frames=16).batch_frames == 1


def _video_run(pipe: Pipeline, video: Path, out: Path, batch_frames: int) -> list[np.ndarray]:
    source = pipe.source(SOURCE)
    job = VideoJob(
        media.probe(video),
        out,
        # Lossless: the decoded frames are then exactly the yuv420p frames handed to the encoder. x264 is not
        # repeatable here (about 1 encode in 100 of the same frames differs by a few levels), so
        # a lossy encode would let the encoder's noise fail a batching test now and then.
        VideoOptions(workers=1, segment_frames=6, encoder=media.EncoderSettings(crf=0)),
        lambda: FrameSwapper(pipe, source, Selection(mode=Mode.MANY), batch_frames=batch_frames),
    )
    summary = job.run()
    assert (summary.frames_out, summary.frames_with_faces) == (12, 10)
    return decode_all(out)[0]


def test_video_batched_and_unbatched_are_identical(pipe: Pipeline, frames, tmp_path: Path) -> None:
    video = make_video(tmp_path / "in.mp4", frames)
    pipe.swapper.net.sizes.clear()
    plain = _video_run(pipe, video, tmp_path / "plain.mp4", batch_frames=1)
    assert set(pipe.swapper.net.sizes) == {1}
    pipe.swapper.net.sizes.clear()
    batched = _video_run(pipe, video, tmp_path / "batched.mp4", batch_frames=4)
    # Segments of 6 frames (the look-ahead never crosses a segment), windows of at most 4.
    assert max(pipe.swapper.net.sizes) == 4 and sum(pipe.swapper.net.sizes) == 5 + 2 * 3 + 2  # 13 faces
    assert len(plain) == len(batched) == 12
    for i, (a, b) in enumerate(zip(plain, batched, strict=True)):
        assert np.array_equal(a, b), i
    decoded = decode_all(video)[0]
    assert np.abs(batched[0].astype(int) - decoded[0].astype(int)).max() > 100


def test_cli_refuses_batch_frames_below_one(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    proc = run_cli(
        tmp_path / "config", "swap", "-s", SOURCE, "-t", MEDIA / "video" / "short_hamilton_clip.mp4",
        "-o", out, "--batch-frames", "0",
    )  # fmt: skip
    assert_one_line_error(proc, ExitCode.USAGE, "--batch-frames")
    assert not out.exists()
