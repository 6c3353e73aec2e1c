"""EIL and its scribble sources: ScribbleSup XML, synthetic and pseudo-label-derived strokes, the
critic, label inference, the DDPG update and target networks, resuming a run killed during an
exploration round, the config checks, and the method end to end in the tiny config."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import snakemake, stage_argv, train_options, write_config
from stages import train_seg
from stages.data.index import VOC_CLASSES, DatasetIndex
from stages.data.scribble_sources import StrokeSettings, write_scribble_source
from stages.data.scribbles import erode, render_scribblesup_xml
from stages.data.toy import generate_toy
from stages.errors import InputError
from stages.io.checkpoint import load_checkpoint
from stages.io.label_png import IGNORE, read_label, write_label
from stages.methods.eil import EIL
from stages.methods.eil.agent import PolicyAgent
from stages.methods.eil.critic import class_fractions, critic_value
from stages.methods.eil.diagnostics import (
    Additions,
    Proposal,
    additions,
    precision,
    random_precision_at,
    round_diagnostics,
)
from stages.methods.eil.explore import Explorer, fit_policy, teacher_views
from stages.methods.eil.inference import class_thresholds, infer_labels, radius_in_pixels
from stages.methods.eil.replay import ReplayBuffer, Transitions
from stages.methods.eil.reward import Rewarder, RewardSettings, decoder_loss, label_target, map_value, tuned_decoder
from stages.models.segmenter import Segmenter, SegmenterSpec
from stages.runtime.distributed import DistContext

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> DatasetIndex:
    root = tmp_path_factory.mktemp("eil")
    index = generate_toy(root / "data", num_classes=3, num_train_aug=12, num_train=4, num_val=2,
                         min_size=48, max_size=64, seed=0)
    index.save(root / "index.json")
    return index


# -- scribble sources ------------------------------------------------------------------------------

def test_scribblesup_xml_with_alias_tags_and_a_point_outside(tmp_path: Path) -> None:
    xml = tmp_path / "2008_000001.xml"
    xml.write_text(
        "<annotation>"
        "<polygon><tag>plane</tag><point><X>5</X><Y>5</Y></point><point><X>30</X><Y>5</Y></point></polygon>"
        "<polygon><tag> TV </tag><point><X>10</X><Y>20</Y></point><point><X>90</X><Y>20</Y></point></polygon>"
        "<polygon><tag>background</tag><point><X>2</X><Y>28</Y></point><point><X>20</X><Y>28</Y></point>"
        "</polygon></annotation>")
    classes = {name: i for i, name in enumerate(VOC_CLASSES)}
    out = render_scribblesup_xml(xml, (32, 40), classes)
    assert out.shape == (32, 40)
    plane, tv = classes["aeroplane"], classes["tvmonitor"]
    assert (out[5, 6:30] == plane).all()
    assert (out[4:7, 15] == plane).all() and out[3, 15] == IGNORE and out[7, 15] == IGNORE  # 3 px wide
    assert (out[20, 11:40] == tv).all()  # drawn up to the border, the point beyond it clipped
    assert (out[28, 3:20] == 0).all()
    assert set(np.unique(out)) == {0, plane, tv, IGNORE}
    assert (out != IGNORE).mean() < 0.25


def test_synthetic_scribbles_lie_inside_their_objects(toy: DatasetIndex, tmp_path: Path) -> None:
    counts = write_scribble_source(toy, "train_aug", "synthetic", tmp_path / "a")
    assert counts["images"] == 12 and counts["without_strokes"] == 0
    assert 0.005 < counts["labelled_fraction"] < 0.15
    for image_id in toy.ids("train_aug"):
        mask = read_label(toy.mask_path(image_id, "train_aug"))
        scribble = read_label(tmp_path / "a" / f"{image_id}.png")
        strokes = scribble != IGNORE
        assert (scribble[strokes] == mask[strokes]).all(), image_id  # never on the 255 band either
        assert set(np.unique(scribble[strokes])) == {0, *toy.labels[image_id]}, image_id
    write_scribble_source(toy, "train_aug", "synthetic", tmp_path / "b")
    assert all((tmp_path / "a" / p.name).read_bytes() == p.read_bytes() for p in (tmp_path / "b").iterdir())


def test_pseudo_scribbles_lie_inside_confident_cores(toy: DatasetIndex, tmp_path: Path) -> None:
    pseudo = tmp_path / "pseudo"
    rng = np.random.default_rng(0)
    for image_id in toy.ids("train_aug"):
        label = read_label(toy.mask_path(image_id, "train_aug"))
        h, w = label.shape
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        label[y:y + h // 3, x:x + w // 3] = IGNORE  # an unsure block, as an ignore band leaves
        write_label(pseudo / f"{image_id}.png", label)
    write_scribble_source(toy, "train_aug", "pseudo", tmp_path / "s", pseudo, StrokeSettings(min_area=1))
    drawn = 0
    for image_id in toy.ids("train_aug"):
        label = read_label(pseudo / f"{image_id}.png")
        scribble = read_label(tmp_path / "s" / f"{image_id}.png")
        for cls in np.unique(scribble[scribble != IGNORE]):
            core = erode(label == cls, 2)
            assert ((scribble == cls) <= core).all(), (image_id, cls)
            drawn += 1
    assert drawn >= 2 * 12  # background and at least one object per image


def test_dataset_scribbles_are_the_data_sets_own(toy: DatasetIndex, tmp_path: Path) -> None:
    first, second = toy.ids("train_aug")[:2]
    own = toy.scribble_path(second)
    kept = own.read_bytes()
    own.unlink()
    try:
        write_scribble_source(toy, "train_aug", "dataset", tmp_path / "d")
    finally:
        own.write_bytes(kept)
    assert (read_label(tmp_path / "d" / f"{first}.png") == read_label(toy.scribble_path(first))).all()
    assert (read_label(tmp_path / "d" / f"{second}.png") == IGNORE).all()  # no file: nothing labelled


# -- critic and label inference --------------------------------------------------------------------

def test_critic_scores_separated_classes_above_mixed() -> None:
    label = torch.full((8, 8), IGNORE)
    label[:, :3] = 0
    label[:, 5:] = 1
    fractions = class_fractions(label, 3, (4, 4))
    assert torch.equal(fractions.sum((1, 2)), torch.tensor([24.0, 24.0, 0.0]) / 4)  # 24 px, cells of 4 px
    features = torch.zeros(2, 4, 4)
    features[0, :, :2], features[1, :, 2:] = 1.0, 1.0  # each class's cells on their own axis
    separated = critic_value(features, fractions)
    assert separated > 0.99  # softmax(-10 * (0, 1)) at the own class
    mixed = critic_value(torch.ones(2, 4, 4), fractions)
    assert torch.isclose(mixed, torch.tensor(0.5))  # every centre alike: a coin toss
    noisy = features + 0.6 * torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0)).abs()
    assert mixed < critic_value(noisy, fractions) < separated
    assert critic_value(features, torch.zeros(3, 4, 4)) == 0


def _distance_to(labelled: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(labelled)
    yy, xx = np.mgrid[:labelled.shape[0], :labelled.shape[1]]
    return np.sqrt((yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2).min(-1)


def test_label_inference_respects_radius_thresholds_and_classes() -> None:
    label = np.full((21, 21), IGNORE, np.uint8)
    label[10, 10] = 1
    label[0, 0] = 0
    probs = np.zeros((3, 21, 21))
    probs[0], probs[1], probs[2] = 0.2, 0.7, 0.1
    probs[:, :, 15:] = np.array([0.05, 0.05, 0.9])[:, None, None]  # class 2, not in the map
    two = class_thresholds(np.array([0.5, 0.9]), "two", 3)  # (tau_o, tau_g)
    assert two.tolist() == [0.9, 0.5, 0.5]
    out = infer_labels(label, probs, two, radius=4)
    near = _distance_to(label != IGNORE) <= 4
    expected = np.where(near, 1, IGNORE).astype(np.uint8)
    expected[:, 15:] = IGNORE  # class 2 is in no stroke: the argmax is background, 0.05 < tau_g
    expected[10, 10], expected[0, 0] = 1, 0  # labelled pixels never change
    assert (out == expected).all()
    assert (infer_labels(label, probs, class_thresholds(np.array([0.75, 0.9]), "two", 3), 4) == label).all()
    free = infer_labels(label, probs, class_thresholds(np.array([0.5]), "one", 3), 8, restrict_classes=False)
    assert (free[:, 15:][_distance_to(label != IGNORE)[:, 15:] <= 8] == 2).all()
    assert (free[_distance_to(label != IGNORE) > 8] == IGNORE).all()
    per_class = class_thresholds(np.array([0.9, 0.6, 0.95]), "per_class", 3)
    own = infer_labels(label, probs, per_class, 8, restrict_classes=False)
    grown = near & (label == IGNORE)
    assert (own[:, :15][grown[:, :15]] == 1).all() and (own[:, 15:] == IGNORE).all()  # 0.7 > 0.6, 0.9 < 0.95


def test_radii_scale_with_the_image() -> None:
    assert radius_in_pixels(0.1, "fraction", (100, 200)) == 20.0  # the longer side
    assert radius_in_pixels(8, "px", (100, 200)) == 8.0
    grown = {}
    for side in (40, 80):
        label = np.full((side, side), IGNORE, np.uint8)
        label[side // 2, side // 2] = 1
        probs = np.stack([np.full((side, side), 0.1), np.full((side, side), 0.9)])
        out = infer_labels(label, probs, np.array([0.5, 0.5]), radius_in_pixels(0.1, "fraction", (side, side)))
        grown[side] = int((out == 1).sum())
    assert grown[80] > 3.5 * grown[40]  # twice the side, twice the radius: about four times the disc
    with pytest.raises(InputError, match="radius_unit: px"):
        EIL(radii=[0.1, 21])
    EIL(radii=[21, 41], radius_unit="px")


# -- the exploratory operators ---------------------------------------------------------------------

def _agent(rate: float = 0.1) -> tuple[PolicyAgent, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    agent = PolicyAgent(in_channels=5, action_dim=2, width=8, blocks=1, lr=0.01, gamma=0.9, target_rate=rate,
                        searcher_steps=100)
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(4, 5, 6, 6, generator=g), torch.rand(4, 2, generator=g),
             torch.tensor([1.0, -1.0, 0.5, 0.0]), torch.randn(4, 5, 6, 6, generator=g))
    return agent, batch


def test_teacher_views_of_one_canvas_are_each_images_own() -> None:
    """Images padded to one canvas share a pass, and each view is what the image gives alone:
    cropped to its own size on the feature grid (stride 4) and at full resolution."""
    torch.manual_seed(0)
    teacher = Segmenter(SegmenterSpec("resnet18", "mlp", 3, decoder_width=16)).eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in [(50, 61, 3), (64, 64, 3), (49, 57, 3)]]
    together = teacher_views(teacher, images, CPU)
    for image, view in zip(images, together):
        alone = teacher_views(teacher, [image], CPU)[0]
        h, w = image.shape[:2]
        assert view.probs.shape == (3, h, w) and view.features.shape == (16, -(-h // 4), -(-w // 4))
        assert view.probs_grid.shape == (3, -(-h // 4), -(-w // 4))
        torch.testing.assert_close(view.features, alone.features, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(view.probs, alone.probs, atol=1e-5)
    # padded further than its own canvas, the view changes: the canvas rule matters
    mixed = teacher_views(teacher, [images[0], np.zeros((100, 100, 3), np.uint8)], CPU)[0]
    assert not np.allclose(mixed.probs, together[0].probs, atol=1e-5)


def test_the_kept_pyramid_gives_back_each_images_features() -> None:
    """The backbone maps a view keeps (cropped per level from a shared canvas) are the image's: the
    decoder on them reproduces the view's features, the input of the updated reward."""
    torch.manual_seed(0)
    teacher = Segmenter(SegmenterSpec("resnet18", "mlp", 3, decoder_width=16)).eval()
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in [(50, 61, 3), (49, 57, 3), (40, 40, 3)]]
    for batch in (images[:2], images[2:]):  # one canvas each: 64 x 64, and 48 x 48 (the smallest)
        for view in teacher_views(teacher, batch, CPU, keep_pyramid=True):
            h, w = view.features.shape[-2:]
            with torch.no_grad():
                again = teacher.decoder.features(view.pyramid)[0, :, :h, :w]
            torch.testing.assert_close(again, view.features, atol=1e-4, rtol=1e-4)
    assert teacher_views(teacher, images[:1], CPU)[0].pyramid is None


def test_updated_reward_trains_a_copy_of_the_decoder() -> None:
    """With no steps the updated reward is the round's; with steps, a copy of the decoder learns the
    map (its loss on it falls) and the teacher's own decoder is left as it was."""
    torch.manual_seed(0)
    teacher = Segmenter(SegmenterSpec("resnet18", "mlp", 3, decoder_width=16)).eval().requires_grad_(False)
    image = np.random.default_rng(2).integers(0, 256, (45, 48, 3), dtype=np.uint8)
    view = teacher_views(teacher, [image], CPU, keep_pyramid=True)[0]
    current = np.full((45, 48), IGNORE, np.uint8)
    current[4:12, 4:12], current[30:40, 30:40] = 0, 1
    proposal = current.copy()
    proposal[:, :24] = np.where(proposal[:, :24] == IGNORE, 2, proposal[:, :24])
    before = {n: p.clone() for n, p in teacher.decoder.state_dict().items()}
    still = Rewarder(teacher.decoder, 3, RewardSettings("updated", steps=0))
    fixed = Rewarder(teacher.decoder, 3, RewardSettings("round"))
    assert still(view.features, view.pyramid, current, proposal) == pytest.approx(
        fixed(view.features, view.pyramid, current, proposal), abs=1e-4)
    on_round = float(map_value(view.features, proposal, 3, 10.0))
    assert fixed.value(view.features, None, proposal) == pytest.approx(on_round)
    target = label_target(proposal)
    assert target.shape == (1, 48, 48) and bool((target[0, 45:] == IGNORE).all())
    tuned = tuned_decoder(teacher.decoder, view.pyramid, proposal, steps=5, lr=0.1)
    with torch.no_grad():
        assert decoder_loss(tuned, view.pyramid, target) < 0.8 * decoder_loss(teacher.decoder, view.pyramid, target)
    assert all(torch.equal(before[n], p) for n, p in teacher.decoder.state_dict().items())


def test_searcher_outputs_thresholds() -> None:
    agent, (state, *_) = _agent()
    action = agent.searcher(state)
    assert action.shape == (4, 2) and bool(((action > 0) & (action < 1)).all())


def test_one_ddpg_update_moves_q_toward_its_target() -> None:
    agent, (state, action, reward, next_state) = _agent()
    with torch.no_grad():
        target = reward + 0.9 * agent.target_assessor(next_state, agent.target_searcher(next_state))
    assert torch.equal(agent.bellman_target(reward, next_state), target)
    def error() -> float:
        with torch.no_grad():
            return float(((agent.assessor(state, action) - target) ** 2).mean())

    before = error()
    terms = agent.ddpg_update(state, action, reward, next_state)
    after = error()
    assert terms["assessor_loss"] == pytest.approx(before, rel=1e-5)
    assert after < before
    q_before = agent.assessor(state, agent.searcher(state)).mean()
    agent.ddpg_update(state, action, reward, next_state)
    assert agent.assessor(state, agent.searcher(state)).mean() != q_before  # the searcher moved too


def test_the_assessor_starts_at_zero_and_fits_a_reward_from_its_replay_buffer() -> None:
    """Reward 2 a_0 - 1 (a_0 the first threshold); gamma 0, so Q should become the reward itself.
    Transitions arrive in 'rounds' and stay in the buffer."""
    torch.manual_seed(0)
    agent = PolicyAgent(in_channels=3, action_dim=2, width=8, blocks=1, lr=0.01, gamma=0.0, target_rate=0.1,
                        searcher_steps=300)
    g = torch.Generator().manual_seed(0)
    replay = ReplayBuffer(capacity=1000)

    def round_of(n: int) -> Transitions:
        action = torch.rand(n, 2, generator=g)
        reward = 2 * action[:, 0] - 1
        return Transitions(torch.randn(n, 3, 4, 4, generator=g), action, reward, torch.randn(n, 3, 4, 4, generator=g),
                           torch.rand(n, 2, generator=g))

    held_out = round_of(64)
    assert (agent.assessor(held_out.state, held_out.action) == 0).all()  # no sign before any reward
    before = agent.assess(**vars(held_out))
    assert math.isnan(before["q_reward_corr"])
    assert before["td_loss"] == pytest.approx(float((held_out.reward ** 2).mean()))
    for _ in range(3):
        replay.add(round_of(64))
        for _ in range(60):
            agent.ddpg_update(**vars(replay.sample(32, g).to(torch.device("cpu"))), train_searcher=False)
    assert len(replay) == 192 and replay.data.state.dtype == torch.float16
    after = agent.assess(**vars(held_out))
    assert after["q_reward_corr"] > 0.9 and after["td_loss"] < 0.3 * before["td_loss"], after


@pytest.mark.parametrize("baseline", ["none", "replay_mean"])
def test_a_reward_baseline_makes_q_positive_for_the_better_proposals(baseline: str) -> None:
    """Every reward negative (-0.3 + 0.2 a_0), as the round's features give them: without a
    baseline Q > 0 (adoption) nowhere; less the buffer's mean (-0.2), Q > 0 where a_0 > 0.5."""
    torch.manual_seed(0)
    agent = PolicyAgent(in_channels=3, action_dim=2, width=8, blocks=1, lr=0.01, gamma=0.0, target_rate=0.1,
                        searcher_steps=300)
    g = torch.Generator().manual_seed(0)

    def drawn(n: int) -> Transitions:
        action = torch.rand(n, 2, generator=g)
        return Transitions(torch.randn(n, 3, 4, 4, generator=g), action, 0.2 * action[:, 0] - 0.3,
                           torch.randn(n, 3, 4, 4, generator=g), torch.rand(n, 2, generator=g))

    replay = ReplayBuffer(capacity=1000)
    replay.add(drawn(256))
    assert replay.mean_reward() == pytest.approx(-0.2, abs=0.01)
    shift = replay.mean_reward() if baseline == "replay_mean" else 0.0
    fit_policy(agent, replay, 300, 32, shift, False, g, torch.device("cpu"))
    held_out = drawn(200)
    with torch.no_grad():
        adopted = (agent.assessor(held_out.state, held_out.action) > 0).float()
    better, worse = held_out.action[:, 0] > 0.65, held_out.action[:, 0] < 0.35
    if baseline == "none":
        assert adopted.mean() < 0.05
    else:
        assert adopted[better].mean() > 0.9 and adopted[worse].mean() < 0.1


def test_replay_buffer_keeps_the_newest_and_rounds_reload_exactly(tmp_path: Path) -> None:
    replay = ReplayBuffer(capacity=5)
    for start in (0, 3):
        reward = torch.arange(start, start + 3, dtype=torch.float32)
        replay.add(Transitions(torch.randn(3, 2, 2, 2), torch.rand(3, 1), reward, torch.randn(3, 2, 2, 2)))
    assert replay.data.reward.tolist() == [1, 2, 3, 4, 5]
    fresh = Transitions(torch.randn(2, 2, 2, 2), torch.rand(2, 1), torch.ones(2), torch.randn(2, 2, 2, 2))
    fresh.save(tmp_path / "t.pt")
    back = Transitions.load(tmp_path / "t.pt")
    assert torch.equal(back.state, fresh.stored().state) and back.next_action is None


def test_diagnostics_on_hand_made_proposals() -> None:
    gt = np.array([[0, 0, 1, 1, IGNORE]], np.uint8)
    old = np.array([[0, IGNORE, IGNORE, 1, IGNORE]], np.uint8)
    new = np.array([[0, 0, 0, 1, 1]], np.uint8)  # one right, one wrong, one where GT is unknown
    a = additions(old, new, gt)
    assert (a.added, a.correct, a.known, a.precision) == (2, 1, 4, 0.5)
    assert precision(old, gt) == 1.0 and precision(new, gt) == 0.75
    randoms = [Additions(10, 8, 100), Additions(30, 12, 100), Additions(0, 0, 100)]
    assert random_precision_at(20, randoms) == pytest.approx(0.6)  # between 0.8 at 10 and 0.4 at 30
    assert random_precision_at(50, randoms) == pytest.approx(0.4) and math.isnan(random_precision_at(5, []))
    proposals = [Proposal(reward=r, adopted=r > 0, delta_precision=d, additions=Additions(10, c, 100),
                          random_precision=0.5)
                 for r, d, c in [(0.3, -0.01, 9), (0.1, -0.05, 7), (-0.1, -0.1, 4), (-0.2, -0.2, 2)]]
    row = round_diagnostics(proposals)
    assert row["reward_precision_spearman"] == pytest.approx(1.0)
    assert row["adopted_precision"] == pytest.approx(0.8) and row["rejected_precision"] == pytest.approx(0.3)
    assert row["adopted_coverage"] == pytest.approx(0.1) and row["adopted_proposals"] == 2
    assert row["proposal_precision"] == pytest.approx(0.55) and row["random_precision"] == pytest.approx(0.5)
    assert math.isnan(round_diagnostics(proposals[:1])["reward_precision_spearman"])


def test_target_networks_track_at_the_configured_rate() -> None:
    agent, batch = _agent(rate=0.25)
    old = {name: p.detach().clone() for name, p in agent.named_parameters() if name.startswith("target_")}
    agent.ddpg_update(*batch)
    live = dict(agent.named_parameters())
    for name, before in old.items():
        source = live[name.removeprefix("target_")]
        assert torch.allclose(live[name], before + 0.25 * (source - before), atol=1e-6), name
    assert any(not torch.equal(live[name], before) for name, before in old.items())
    agent.ddpg_update(*batch, next_action=torch.rand(4, 2), train_searcher=False)  # a random policy
    frozen = {n: p.detach().clone() for n, p in agent.named_parameters() if n.startswith("target_searcher")}
    agent.ddpg_update(*batch, next_action=torch.rand(4, 2), train_searcher=False)
    assert all(torch.equal(live[n], p) for n, p in frozen.items())


# -- the method in train_seg -----------------------------------------------------------------------

class Killed(Exception):
    pass


def _train(toy: DatasetIndex, scribbles: Path, out: Path, **options) -> None:
    options = {"pretrain_steps": 2, "explore_every": 2, "radii": [8, 16], "radius_unit": "px", "transitions": 3,
               "policy_updates": 2, "policy_batch": 3, "policy_width": 8, "state_grid": 8, "show_images": 2, **options}
    argv = stage_argv({
        "index": toy.root.parent / "index.json", "split": "train_aug", "method": "eil",
        "method_options": json.dumps(options), "scribbles": scribbles, "backbone": "resnet10t", "weights": "none",
        "decoder": "mlp", "out": out / "model.pt", "checkpoint": out / "ckpt.pt", "metrics": out / "metrics.csv",
        "state_dir": out / "state", "outputs": out / "outputs",
        **train_options(crop_size=40, scale_range=[0.8, 1.2], color_jitter=0.2, batch_size=2, steps=6,
                        weight_decay=0.0)})
    train_seg.main(argv)


def test_a_kill_during_exploration_resumes_at_that_round(toy, tmp_path, monkeypatch, capsys) -> None:
    scribbles = tmp_path / "scribbles"
    write_scribble_source(toy, "train_aug", "synthetic", scribbles)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _train(toy, scribbles, whole)
    rounds = pd.read_csv(whole / "outputs" / "rounds.csv")
    assert rounds["round"].tolist() == [0, 1, 2] and rounds["step"].tolist() == [0, 2, 4]
    assert rounds["radius"].tolist()[1:] == [8, 16]
    diagnostics = ["q_reward_corr_before", "q_reward_corr", "td_loss_first", "td_loss_last", "proposals",
                   "reward_precision_spearman", "adopted_precision", "rejected_precision", "proposal_precision",
                   "random_precision"]
    assert set(diagnostics) <= set(rounds.columns) and (rounds["proposals"].iloc[1:] > 0).all()
    assert rounds["replay"].iloc[1:].tolist() == [3, 6]  # round 2 learns from round 1's transitions too
    assert all((whole / "state" / f"round{r}" / "transitions.pt").is_file() for r in (1, 2))
    assert (whole / "outputs" / "rounds.png").is_file() and (whole / "outputs" / "rounds_labels.png").is_file()
    assert len(list((whole / "outputs").glob("labels_round2_*.png"))) == 2

    relabel = Explorer.relabel

    def dies_in_round_two(self, ids, image, label, write, truth):
        if self.s.radius == 16:
            write(ids[0], label(ids[0]))  # a half-written round
            raise Killed
        return relabel(self, ids, image, label, write, truth)

    monkeypatch.setattr(Explorer, "relabel", dies_in_round_two)
    with pytest.raises(Killed):
        _train(toy, scribbles, killed)
    state = load_checkpoint(killed / "ckpt.pt")
    assert state["step"] == 2 and state["hooks"]["rounds_done"] == 1  # the checkpoint before round 2
    assert not [p.name for p in (killed / "state" / "round2").iterdir()]  # nothing of round 2 looks complete
    monkeypatch.setattr(Explorer, "relabel", relabel)
    capsys.readouterr()
    _train(toy, scribbles, killed)
    assert "resuming from" in capsys.readouterr().err
    a, b = load_checkpoint(whole / "model.pt")["model"], load_checkpoint(killed / "model.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert pd.read_csv(killed / "outputs" / "rounds.csv").equals(rounds)
    for r in (1, 2):
        for png in sorted((whole / "state" / f"round{r}" / "labels").iterdir()):
            assert (read_label(png) == read_label(killed / "state" / f"round{r}" / "labels" / png.name)).all()


def test_scribbles_only_trains_without_rounds(toy, tmp_path) -> None:
    scribbles = tmp_path / "scribbles"
    write_scribble_source(toy, "train_aug", "synthetic", scribbles)
    _train(toy, scribbles, tmp_path / "none", policy="none")
    rounds = pd.read_csv(tmp_path / "none" / "outputs" / "rounds.csv")
    assert rounds["round"].tolist() == [0] and rounds["precision"].iloc[0] == 1.0  # synthetic strokes are exact
    assert not list((tmp_path / "none" / "state").glob("round*"))


def test_updated_reward_random_exploration_and_a_round_baseline_run_a_round(toy, tmp_path) -> None:
    scribbles = tmp_path / "scribbles"
    write_scribble_source(toy, "train_aug", "synthetic", scribbles)
    _train(toy, scribbles, tmp_path / "updated", reward_features="updated", reward_steps=1, explore_random=0.5,
           reward_baseline="round_mean")
    rounds = pd.read_csv(tmp_path / "updated" / "outputs" / "rounds.csv")
    assert rounds["round"].tolist() == [0, 1, 2] and np.isfinite(rounds["reward"].iloc[1:]).all()
    # round_mean: the baseline each round subtracts is that round's mean explored reward
    np.testing.assert_allclose(rounds["reward_baseline"].iloc[1:], rounds["reward"].iloc[1:])


# -- configuration ---------------------------------------------------------------------------------

def _train_seg_command(out: str, variant: str) -> str:
    return next(line for line in out.splitlines() if f"--out results/seg/{variant}/" in line)


def test_scribble_sources_become_rules_and_flags(tmp_path) -> None:
    cfg = write_config(tmp_path / "config.yaml", variants={
        "eil_p": {"method": "eil", "scribbles": "pseudo:plmix", "policy": "random"}})
    out = snakemake(tmp_path, "-n", "-p", "--cores", "1", "results/seg/eil/model.pt", "results/seg/eil_p/model.pt",
                    config=cfg).stdout
    assert "--scribbles results/scribbles/synthetic/train_aug" in _train_seg_command(out, "eil")
    assert "--scribbles results/scribbles/pseudo/plmix/train_aug" in _train_seg_command(out, "eil_p")
    assert "--source pseudo --pseudo-labels results/pseudo_labels/plmix/train_aug" in out
    assert "rule scribbles:" in out and "rule scribbles_pseudo:" in out


@pytest.mark.parametrize("variant, message", [
    ({"method": "eil", "scribbles": "pseudo:nope"}, "variants.bad.scribbles: 'pseudo:nope' names no refinement"),
    ({"method": "eil", "scribbles": "drawn"}, "'drawn' does not match"),
    ({"method": "eil"}, "'scribbles' is a required property"),
    ({"method": "eil", "scribbles": "synthetic", "policy": "greedy"}, "'greedy' is not one of"),
    ({"method": "eil", "scribbles": "synthetic", "reward_baseline": "median"}, "'median' is not one of"),
])
def test_bad_eil_variants_are_named(tmp_path, variant, message) -> None:
    cfg = write_config(tmp_path / "config.yaml", variants={"bad": variant})
    proc = snakemake(tmp_path, "-n", "--cores", "1", config=cfg, check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr
    assert "bad" in proc.stdout + proc.stderr


@pytest.mark.workflow
def test_eil_end_to_end_in_the_tiny_config(tiny_run) -> None:
    workdir, _ = tiny_run
    metrics = pd.read_csv(workdir / "results" / "eval" / "eil" / "metrics.csv")
    assert metrics.notna().all().all()
    outputs = workdir / "results" / "seg" / "eil" / "outputs"
    rounds = pd.read_csv(outputs / "rounds.csv")
    assert rounds["round"].tolist() == [0, 1] and rounds["radius"].iloc[1] == 0.25
    assert {"precision", "coverage", "adopted", "reward", "td_loss_first", "td_loss_last", "searcher_loss",
            "reward_precision_spearman", "adopted_precision"} <= set(rounds)
    assert (outputs / "rounds_labels.png").is_file() and len(list(outputs.glob("labels_round1_*.png"))) == 2
    assert "eil" in (workdir / "results" / "summary" / "summary.md").read_text()
