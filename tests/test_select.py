"""Which faces get replaced: ordering, `many`, `reference`, and per-person maps on group photos."""

import numpy as np
import pytest

from facefuse.analysis.select import Mode, Order, Selection, order_faces, select_faces
from facefuse.errors import NoMatch

GROUP = "groups/obama_and_biden.jpg"  # Obama, Biden and a third, small face


@pytest.fixture(scope="module")
def group(pipe, images):
    return pipe.analyser.analyse(images(GROUP), descriptors=True)


def describe(pipe, image, box):
    """The descriptor of the output face found nearest a box."""
    faces = pipe.analyser.analyse(image, descriptors=True)
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    return min(faces, key=lambda f: np.linalg.norm(f.centre - centre)).descriptor


def test_orderings(group):
    xs = [f.centre[0] for f in order_faces(group, Order.LEFT_RIGHT)]
    assert xs == sorted(xs)
    areas = [f.area for f in order_faces(group, Order.SMALL_LARGE)]
    assert areas == sorted(areas)
    assert order_faces(group, Order.BEST_WORST)[0].score == max(f.score for f in group)
    one = select_faces(group, Selection(mode=Mode.ONE))
    assert len(one) == 1 and one[0].area == max(f.area for f in group)
    second_from_left = select_faces(group, Selection(mode=Mode.MANY, order=Order.LEFT_RIGHT, index=1))
    assert second_from_left == [order_faces(group, Order.LEFT_RIGHT)[1]]


def test_many_replaces_every_face(pipe, images, group):
    source = pipe.source(images("images/kit_harington1.jpg"), descriptors=True)
    result = pipe.run(source, images(GROUP), Selection(mode=Mode.MANY))
    assert result.faces_found == result.faces_swapped == len(group) == 3
    for face in group:
        out_desc = describe(pipe, result.image, face.box)
        # Each output face is nearer the source than the person who stood there.
        assert np.linalg.norm(out_desc - source.descriptor) < np.linalg.norm(out_desc - face.descriptor)


def test_reference_replaces_only_the_chosen_person(pipe, images, group):
    source = pipe.source(images("images/kit_harington1.jpg"))
    biden = pipe.reference([images("images/biden.jpg"), images("images/biden2.jpg")])
    target = images(GROUP)
    result = pipe.run(source, target, Selection(mode=Mode.REFERENCE), reference=biden)
    assert result.faces_swapped == 1
    assert result.swapped[0].distance(biden) < 0.6
    chosen = min(group, key=lambda f: np.linalg.norm(f.centre - result.swapped[0].centre))
    changed = (result.image != target).any(axis=2)
    for face in group:
        x0, y0, x1, y1 = face.box.astype(int)
        if face is chosen:
            assert changed[y0:y1, x0:x1].any()
        else:  # everyone else is bit-identical
            pad = int(0.2 * face.width)
            assert not changed[max(0, y0 - pad) : y1 + pad, max(0, x0 - pad) : x1 + pad].any()


def test_reference_with_nobody_matching_says_so(pipe, images):
    with pytest.raises(NoMatch):
        pipe.swap_image(
            images("images/kit_harington1.jpg"),
            images("images/obama.jpg"),
            Selection(mode=Mode.REFERENCE),
            reference=images("images/rose_leslie1.jpg"),
        )


def test_map_gives_each_person_their_own_source(pipe, images, group):
    kit = pipe.source(images("images/kit_harington1.jpg"), descriptors=True)
    rose = pipe.source(images("images/rose_leslie1.jpg"), descriptors=True)
    obama_ref = pipe.reference(images("images/obama.jpg"))
    biden_ref = pipe.reference(images("images/biden.jpg"))
    people = [(kit, obama_ref), (rose, biden_ref)]
    result = pipe.run(None, images(GROUP), people=people)
    assert result.faces_swapped == 2
    obama = min(group, key=lambda f: f.distance(obama_ref))
    biden = min(group, key=lambda f: f.distance(biden_ref))
    new_obama = describe(pipe, result.image, obama.box)
    new_biden = describe(pipe, result.image, biden.box)
    assert np.linalg.norm(new_obama - kit.descriptor) < np.linalg.norm(new_obama - rose.descriptor)
    assert np.linalg.norm(new_biden - rose.descriptor) < np.linalg.norm(new_biden - kit.descriptor)
    third = next(f for f in group if f is not obama and f is not biden)
    x0, y0, x1, y1 = third.box.astype(int)
    assert (result.image[y0:y1, x0:x1] == images(GROUP)[y0:y1, x0:x1]).all()


def test_best_source_photo_is_the_sharpest_frontal_one(pipe, images):
    blurry = images("images/obama_small.jpg")
    sharp = images("images/obama.jpg")
    ident = pipe.source([blurry, sharp], descriptors=True)
    assert ident.face.quality == max(f.quality for f in ident.faces)
    assert ident.prepared.face is ident.face
    assert len(ident.faces) == 2
    np.testing.assert_allclose(
        ident.descriptor, np.mean([f.descriptor for f in ident.faces], axis=0), atol=1e-6
    )
