"""PL-Mix paste geometry: image and label move together; ignore pixels never become labels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.data.tensors import to_tensor
from stages.plmix.paste import PasteSettings, mixed_classes, paste, rotate_rescale
from stages.plmix.training import MixCollate

COLOURS = {0: (0, 0, 0), 1: (200, 40, 40), 2: (40, 200, 40), 3: (40, 40, 200)}


def painted(label: np.ndarray) -> np.ndarray:
    """An image whose colour says the class of each pixel (255 = ignore painted grey)."""
    image = np.full(label.shape + (3,), 128, dtype=np.uint8)
    for c, colour in COLOURS.items():
        image[label == c] = colour
    return image


def scene() -> np.ndarray:
    """40x48 label: a 1-block, a 2-disc, an ignore ring around the disc, background elsewhere."""
    label = np.zeros((40, 48), dtype=np.uint8)
    label[6:18, 8:26] = 1
    yy, xx = np.mgrid[:40, :48]
    r = np.hypot(yy - 27, xx - 33)
    label[(r >= 8) & (r < 10)] = 255
    label[r < 8] = 2
    return label


def interior(label: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood, inside the crop, has their label: the bilinear image
    sample there cannot reach another region, even at 2x."""
    pad = np.pad(label.astype(int), radius, constant_values=-1)
    same = np.ones(label.shape, dtype=bool)
    size = 2 * radius + 1
    for dy in range(size):
        for dx in range(size):
            same &= pad[dy:dy + label.shape[0], dx:dx + label.shape[1]] == label
    return same


def test_identity_transform_changes_nothing() -> None:
    label = scene()
    image, moved = rotate_rescale(painted(label), label, 0.0, 1.0)
    assert np.array_equal(moved, label) and np.array_equal(image, painted(label))


def test_quarter_turn_matches_rot90() -> None:
    label = scene()[:40, :40]
    image, moved = rotate_rescale(painted(label), label, 90.0, 1.0)
    assert np.array_equal(moved, np.rot90(label))
    assert np.abs(image.astype(int) - np.rot90(painted(label))).max() <= 1  # bilinear rounding


@pytest.mark.parametrize("angle, scale", [(33.0, 1.7), (-71.0, 0.55), (180.0, 2.0), (12.0, 0.5)])
def test_image_and_label_stay_aligned(angle: float, scale: float) -> None:
    label = scene()
    image, moved = rotate_rescale(painted(label), label, angle, scale)
    inside = interior(moved)
    for c, colour in COLOURS.items():
        where = inside & (moved == c)
        if where.any():
            assert np.abs(image[where].astype(int) - colour).max() <= 1, (c, angle, scale)
    # an object's area scales with scale^2 while it stays inside the crop
    if scale <= 1:
        assert (moved == 2).sum() == pytest.approx((label == 2).sum() * scale ** 2, rel=0.2)


def test_pixels_from_outside_are_ignored_and_black() -> None:
    label = np.ones((20, 20), dtype=np.uint8)
    image, moved = rotate_rescale(painted(label), label, 45.0, 0.5)
    outside = moved == 255
    assert outside[0, 0] and outside[-1, -1] and moved[10, 10] == 1
    assert (image[outside & interior(moved)] == 0).all()
    assert set(np.unique(moved)) == {1, 255}


def test_paste_takes_source_foreground_only() -> None:
    src_label = scene()
    dst_label = np.zeros_like(src_label)
    dst_label[20:40, 0:20] = 3
    dst_label[0:4, :] = 255
    src_image, dst_image = painted(src_label), painted(dst_label)
    image, label, mask = paste(src_image, src_label, dst_image, dst_label)
    assert np.array_equal(mask, (src_label == 1) | (src_label == 2))
    assert np.array_equal(label[mask], src_label[mask])
    assert np.array_equal(label[~mask], dst_label[~mask])
    assert np.array_equal(image[mask], src_image[mask]) and np.array_equal(image[~mask], dst_image[~mask])
    # the source's ignore ring is not pasted; the partner's ignore stays ignored where not covered
    assert not mask[src_label == 255].any()
    assert (label[(dst_label == 255) & ~mask] == 255).all()
    assert (label == 255).sum() == ((dst_label == 255) & ~mask).sum()
    # and every labelled pixel shows its class' colour: image and label agree
    for c, colour in COLOURS.items():
        assert (image[label == c] == colour).all()


def test_transformed_paste_keeps_ignore_out() -> None:
    src_label = scene()
    moved_image, moved_label = rotate_rescale(painted(src_label), src_label, 30.0, 1.8)
    dst_label = np.full_like(src_label, 255)
    image, label, mask = paste(moved_image, moved_label, painted(dst_label), dst_label)
    assert set(np.unique(label)) <= {1, 2, 255}
    assert np.array_equal(label != 255, mask)


def test_class_set_follows_what_is_visible() -> None:
    dst_label = np.zeros((10, 10), dtype=np.uint8)
    dst_label[0:3, 0:3] = 1  # will be covered completely
    dst_label[6:9, 6:9] = 2  # stays visible
    src_label = np.zeros_like(dst_label)
    src_label[0:4, 0:4] = 3
    _, label, _ = paste(painted(src_label), src_label, painted(dst_label), dst_label)
    # 1 covered -> dropped; 2 visible; 3 pasted; 4 in the partner's image labels but never located -> kept
    assert mixed_classes(label, dst_label, [1, 2, 4]) == [2, 3, 4]


def test_paste_settings_draw() -> None:
    rng = np.random.default_rng(0)
    assert PasteSettings(False, (0.5, 2.0), 30.0).draw(rng) is None
    draws = np.array([PasteSettings(True, (0.5, 2.0), 30.0).draw(rng) for _ in range(2000)])
    assert draws[:, 0].min() >= -30 and draws[:, 0].max() <= 30
    assert draws[:, 1].min() >= 0.5 and draws[:, 1].max() <= 2.0
    assert np.mean(draws[:, 1] < 1) == pytest.approx(0.5, abs=0.05)  # log-uniform: as many shrink as grow


def test_collate_pastes_each_crop_onto_the_next() -> None:
    labels = [np.zeros((8, 8), np.uint8) for _ in range(3)]
    labels[0][0:4, 0:4] = 1
    labels[1][4:8, 4:8] = 2
    labels[2][:, :] = 255
    items = [{"image": painted(lab), "label": lab, "classes": classes, "geometry": None}
             for lab, classes in zip(labels, ([1], [2], [3]))]
    batch = MixCollate(num_classes=4)(items)
    assert batch["image"].shape == (3, 3, 8, 8) and batch["label"].dtype == torch.int64
    expected = [paste(painted(labels[j]), labels[j], painted(labels[(j + 1) % 3]), labels[(j + 1) % 3])
                for j in range(3)]
    for j, (image, label, _) in enumerate(expected):
        assert torch.equal(batch["label"][j], torch.from_numpy(label).long())
        assert torch.equal(batch["image"][j], to_tensor(image))
    # 0 onto 1: {1, 2}; 1 onto 2 (all ignore, class 3 never located): {2, 3}; 2 onto 0: nothing pasted -> {1}
    assert batch["labels"].tolist() == [[1, 1, 0], [0, 1, 1], [1, 0, 0]]
