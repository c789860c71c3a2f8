"""The identity check (swap.guard): each new face is read by the recogniser, and redone stronger when it
still reads as the target's person, or weaker when it reads as the source with room to spare."""

import json
from dataclasses import replace

import numpy as np
import pytest
from cli_helpers import run_cli
from conftest import media

from facefuse.analysis.landmarks import detector_box
from facefuse.geometry import NOSE, similarity, transform_points
from facefuse.media import read_image
from facefuse.swap.guard import MARGIN
from facefuse.swap.mesh import BASE_LEVEL, identity_levels


def _read(pipe, out, tface, sface) -> tuple[float, float]:
    """(identity margin, landmark error) of an output, found afresh as the judge finds it."""
    found = pipe.analyser.analyse(out, largest_only=True, descriptors=True)[0]
    margin = found.distance(tface.descriptor) - found.distance(sface.descriptor)
    nme = np.linalg.norm(found.landmarks_68 - tface.landmarks_68, axis=1).mean() / tface.eye_distance
    return margin, nme


def _base_and_checked(pipe, images, src_name, tgt_name):
    src, tgt = images(src_name), images(tgt_name)
    sface = pipe.analyser.analyse(src, largest_only=True, descriptors=True)[0]
    tface = pipe.analyser.analyse(tgt, largest_only=True, descriptors=True)[0]
    base = pipe.swapper.swap(tgt, tface, pipe.swapper.prepare(src, sface))
    result = pipe.run(pipe.source(src), tgt)
    (check,) = result.identity_checks
    return base, result.image, check, tface, sface


def test_the_levels_run_from_the_targets_light_and_brows_to_the_sources(pipe):
    levels = identity_levels(pipe.swapper.settings)
    assert levels[BASE_LEVEL] == pipe.swapper.settings
    tones = [st.tone_sigma for st in levels]
    assert tones == sorted(tones) and tones[0] < tones[BASE_LEVEL] < tones[-1]
    assert levels[0].brows < levels[BASE_LEVEL].brows <= levels[-1].brows
    assert levels[-1].eyes > levels[BASE_LEVEL].eyes
    assert levels[-1].nose > levels[BASE_LEVEL].nose


def test_a_face_that_still_reads_as_the_target_is_redone_stronger(pipe, images):
    # Rose Leslie onto Joe Biden: the plain swap keeps his jaw line, hair and light, and the
    # recogniser still calls it Biden.
    base, out, check, tface, sface = _base_and_checked(
        pipe, images, "images/rose_leslie1.jpg", "images/biden.jpg"
    )
    before, _ = _read(pipe, base, tface, sface)
    after, _ = _read(pipe, out, tface, sface)
    assert before < MARGIN, "the pair must need the check for this test to mean anything"
    assert check.strength > 0 and check.tries >= 2
    assert after > before + 0.03, (before, after)
    assert after > 0, "the output now reads as the source"


def test_a_face_with_identity_to_spare_is_made_weaker_and_keeps_the_expression(pipe, images):
    # Barack Obama onto Joe Biden reads as Obama by a wide margin at the plain strength.
    base, out, check, tface, sface = _base_and_checked(pipe, images, "images/obama.jpg", "images/biden2.jpg")
    margin_before, nme_before = _read(pipe, base, tface, sface)
    margin_after, nme_after = _read(pipe, out, tface, sface)
    assert margin_before > 2 * MARGIN
    assert check.strength < 0
    assert nme_after < nme_before - 0.003, (nme_before, nme_after)
    assert margin_after > 0, "still the source's face"


def test_a_track_chooses_once_and_keeps_its_level(pipe, images):
    src, tgt = images("images/rose_leslie1.jpg"), images("images/biden.jpg")
    ident = pipe.source(src)
    tface = pipe.analyser.analyse(tgt, largest_only=True)[0]
    tface.memory = {}
    first, check = pipe.guard.swap(tgt, tface, ident.prepared, ident.descriptor)
    assert check is not None and tface.memory["identity_level"] == check.strength + BASE_LEVEL
    again, none = pipe.guard.swap(tgt, tface, ident.prepared, ident.descriptor)
    assert none is None, "a later frame of the track must not pay for the check again"
    assert np.array_equal(first, again)


def _nose_swaps(pipe, images, src_name, tgt_name):
    """The target's nose, the source's nose laid onto the target's face, and the nose refitted on
    swaps with none and all of the source's nose layout."""
    src, tgt = images(src_name), images(tgt_name)
    sface = pipe.analyser.analyse(src, largest_only=True)[0]
    tface = pipe.analyser.analyse(tgt, largest_only=True)[0]
    prepared = pipe.swapper.prepare(src, sface)
    laid = transform_points(sface.landmarks_68, similarity(sface.landmarks_68, tface.landmarks_68))
    box = detector_box(tface.landmarks_68)
    noses, outs = [], []
    for nose in (0.0, 1.0):
        out = pipe.swapper.with_settings(replace(pipe.swapper.settings, nose=nose)).swap(tgt, tface, prepared)
        noses.append(np.asarray(pipe.analyser.landmarks.fit(out, box)[0])[NOSE])
        outs.append(out)
    own = np.asarray(pipe.analyser.landmarks.fit(tgt, box)[0])[NOSE]
    return own, laid[NOSE], noses, outs, tface.eye_distance


def test_the_strongest_levels_carry_the_sources_nose_between_like_poses(pipe, images):
    own, laid, (kept, carried), _, iod = _nose_swaps(pipe, images, "images/obama.jpg", "images/biden2.jpg")

    def off(a, b):
        return float(np.linalg.norm(a - b, axis=1).mean()) / iod

    assert off(carried, laid) < 0.8 * off(kept, laid), "the output's nose reads as the source's layout"
    assert off(carried, own) > off(kept, own) + 0.01


def test_a_frontal_noses_layout_is_not_forced_onto_a_turned_head(pipe, images):
    # Lin-Manuel Miranda faces the camera; Kit Harington's head is turned some 45 degrees.
    *_, (kept, carried), _ = _nose_swaps(
        pipe, images, "images/lin-manuel-miranda.png", "images/kit_harington2.jpg"
    )
    assert np.array_equal(kept, carried)


def test_the_nose_is_not_taken_where_it_costs_the_targets_shape(pipe, images):
    # Kit Harington onto Alex Lacamoire reads nearer Kit only at the strongest levels. Carrying the
    # nose would widen the margin further but moves the landmarks more than it is worth.
    _, out, check, tface, sface = _base_and_checked(
        pipe, images, "images/kit_harington1.jpg", "images/alex_lacamoire2.jpg"
    )
    assert check.strength + BASE_LEVEL < pipe.guard.first_nose
    prepared = pipe.swapper.prepare(images("images/kit_harington1.jpg"), sface)
    nosed = pipe.guard.swappers[pipe.guard.first_nose].swap(
        images("images/alex_lacamoire2.jpg"), tface, prepared
    )
    chosen_margin, chosen_nme = _read(pipe, out, tface, sface)
    nose_margin, nose_nme = _read(pipe, nosed, tface, sface)
    assert nose_margin > chosen_margin + 0.02, "the nose level must have had the margin to be chosen"
    assert nose_nme > chosen_nme


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guard_cli")
    args = ["swap", "--source", media("images/rose_leslie1.jpg")]
    args += ["--target", media("images/biden.jpg"), "--json"]
    checked = run_cli(tmp, *args, "--output", tmp / "checked.png")
    plain = run_cli(tmp, *args, "--output", tmp / "plain.png", "--no-identity-check")
    return tmp, checked, plain


def test_the_cli_reports_each_faces_check_and_can_turn_it_off(cli_runs):
    tmp, checked, plain = cli_runs
    assert checked.returncode == 0 and plain.returncode == 0, checked.stderr + plain.stderr
    (entry,) = json.loads(checked.stdout)["identity_checks"]
    assert entry["strength"] > 0 and entry["tries"] >= 2 and "margin" in entry
    assert "identity_checks" not in json.loads(plain.stdout)
    assert not np.array_equal(read_image(tmp / "checked.png"), read_image(tmp / "plain.png"))
