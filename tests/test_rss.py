"""RSS: advantages, SyncAN over two gloo processes, PSD, PSR scales, every reward source, the
SFPNeXt decoder, and the method trained through train_seg (cold start included)."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from test_ddp_gradients import free_port
from test_train_seg import cli_args

from conftest import REPO, snakemake, toy_with_gt_labels, write_config
from stages import train_seg
from stages.errors import InputError
from stages.io.label_png import IGNORE
from stages.methods.registry import get_method, load_trained_model
from stages.methods.rss import RSS
from stages.methods.rss.advantages import class_balanced_advantages, normalised_advantages, psd_advantages
from stages.methods.rss.rewards import MaskReward, RewardBatch, RewardSpec, TagReward, make_reward_source, tag_jaccard
from stages.methods.rss.sampling import cell_classes, grid_size, pool_cells, sample_actions, upsample_cells
from stages.models.segmenter import Segmenter, SegmenterSpec
from stages.runtime.distributed import DistContext, distributed_session
from stages.runtime.hooks import StepContext
from stages.runtime.settings import TrainSettings

SINGLE = DistContext(0, 1, 0, torch.device("cpu"))


# -- advantages -------------------------------------------------------------------------------
def test_normalisation_over_the_group_on_hand_made_rewards() -> None:
    rewards = torch.tensor([[1.0, 1.0, 0.0], [0.0, 7.0, 0.5]])
    valid = torch.tensor([[True, True, True], [True, False, False]])  # 7 and 0.5 are not rewards
    adv = normalised_advantages(rewards, valid, SINGLE)
    # valid group: 1, 1, 0, 0 -> mean 0.5, population std 0.5 -> +-1 (up to the eps)
    want = torch.tensor([[1.0, 1.0, -1.0], [-1.0, 0.0, 0.0]]) * 0.5 / (0.5 + 1e-4)
    assert torch.allclose(adv, want)
    assert torch.equal(normalised_advantages(torch.full((2, 3), 0.3), torch.ones(2, 3, dtype=torch.bool)),
                       torch.zeros(2, 3))  # equal rewards teach nothing


def test_class_balanced_advantages_normalise_and_weigh_each_class_apart() -> None:
    # one sample, one image, 6 positions: class 0 on four (rewards 1, 1, 1, 0), class 1 on two (0, 1)
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 1.0]).reshape(1, 1, 1, 6)
    classes = torch.tensor([0, 0, 0, 0, 1, 1]).reshape(1, 1, 6)
    valid = torch.ones_like(rewards, dtype=torch.bool)
    adv, weight = class_balanced_advantages(rewards, valid, classes, num_classes=3)
    sd0 = (0.75 * 0.25) ** 0.5  # class 0: mean 0.75; class 1: mean 0.5, std 0.5
    want = torch.tensor([0.25 / sd0, 0.25 / sd0, 0.25 / sd0, -0.75 / sd0, -1.0, 1.0])
    assert torch.allclose(adv.flatten(), want, atol=1e-3)
    # each class half the total weight, the mean weight 1: 6/2 spread over 4 and over 2 positions
    assert torch.allclose(weight.flatten(), torch.tensor([0.75, 0.75, 0.75, 0.75, 1.5, 1.5]))
    # balance_power 0.5: weights 1/sqrt(4) and 1/sqrt(2), scaled to mean 1; 0: every position 1
    half = class_balanced_advantages(rewards, valid, classes, num_classes=3, power=0.5)
    scale = 6 / (4 * 4 ** -0.5 + 2 * 2 ** -0.5)
    w0, w1 = scale * 4 ** -0.5, scale * 2 ** -0.5
    assert torch.allclose(half[0], adv) and torch.allclose(half[1].flatten(), torch.tensor([w0] * 4 + [w1] * 2))
    assert torch.equal(class_balanced_advantages(rewards, valid, classes, 3, power=0.0)[1], torch.ones_like(rewards))
    with pytest.raises(InputError, match="reward.balance .* needs reward.level pixel"):
        RewardSpec.from_options({"balance": True})
    with pytest.raises(InputError, match="balance_power weighs the classes of reward.balance"):
        RewardSpec.from_options({"level": "pixel", "balance_power": 0.5})
    with pytest.raises(InputError, match=r"balance_power must lie in \[0, 1\], got 2"):
        RewardSpec.from_options({"level": "pixel", "balance": True, "balance_power": 2})


def test_cell_classes_take_the_most_frequent_labelled_class() -> None:
    reference = torch.tensor([[[0, 1, 2, 2], [1, 1, 255, 2], [255, 255, 0, 0], [255, 255, 0, 1]]])
    assert cell_classes(reference, (2, 2), num_classes=3).tolist() == [[[1, 2], [255, 0]]]
    assert torch.equal(cell_classes(reference, (4, 4), num_classes=3), reference)


REWARDS_PER_RANK = [torch.tensor([1.0, 1.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0])]


def syncan_worker(rank: int, port: int, out: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    rewards = REWARDS_PER_RANK[rank]
    valid = torch.ones_like(rewards, dtype=torch.bool)
    with distributed_session("cpu") as ctx:
        synced = normalised_advantages(rewards, valid, ctx, sync=True)
        local = normalised_advantages(rewards, valid, ctx, sync=False)
    torch.save({"synced": synced, "local": local}, out / f"rank{rank}.pt")


def test_syncan_equals_single_process_over_the_concatenated_batch(tmp_path: Path) -> None:
    mp.spawn(syncan_worker, args=(free_port(), tmp_path), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    together = torch.cat(REWARDS_PER_RANK)
    single = normalised_advantages(together, torch.ones_like(together, dtype=torch.bool), SINGLE)
    assert torch.allclose(torch.cat([r["synced"] for r in ranks]), single, atol=1e-6)
    unsynced = torch.cat([r["local"] for r in ranks])
    assert (unsynced - single).abs().max() > 0.3  # per-rank statistics are another normalisation


def test_psd_advantages_on_a_pair_of_small_maps() -> None:
    first = torch.tensor([[1, 2], [0, 0]])
    second = torch.tensor([[1, 0], [0, 3]])
    actions = torch.stack([first, second])[:, None]  # (N=2, B=1, 2, 2)
    rewards = torch.tensor([[0.8], [0.5]])
    adv = psd_advantages(actions, rewards, torch.ones(2, 1, dtype=torch.bool))
    assert torch.allclose(adv[0, 0], torch.tensor([[0.0, 0.3], [0.0, 0.3]]))
    assert torch.allclose(adv[1, 0], torch.tensor([[0.0, -0.3], [0.0, -0.3]]))
    # a pair whose partner has no valid reward teaches nothing
    assert torch.equal(psd_advantages(actions, rewards, torch.tensor([[True], [False]])), torch.zeros(2, 1, 2, 2))
    # three maps: each is compared with the next one, the last with the first
    third = torch.tensor([[1, 2], [0, 3]])
    adv3 = psd_advantages(torch.stack([first, second, third])[:, None], torch.tensor([[0.8], [0.5], [0.6]]),
                          torch.ones(3, 1, dtype=torch.bool))
    assert torch.allclose(adv3[2, 0], torch.tensor([[0.0, 0.0], [0.0, -0.2]]))


# -- PSR --------------------------------------------------------------------------------------
def test_psr_pools_probabilities_and_maps_cells_back() -> None:
    probs = torch.rand(2, 4, 8, 12).softmax(1)
    pooled = pool_cells(probs, grid_size((8, 12), 0.25))  # 2 x 3 cells of 4 x 4
    assert pooled.shape == (2, 4, 2, 3)
    assert torch.allclose(pooled.sum(1), torch.ones(2, 2, 3))  # still distributions
    assert torch.allclose(pooled[0, :, 1, 2], probs[0, :, 4:8, 8:12].mean((-2, -1)))
    # sizes that do not divide: 5 rows into 2 cells (3 + 2); upsampling uses the same cells
    odd = pool_cells(torch.arange(5.0).reshape(1, 5, 1).expand(1, 5, 1), (2, 1))
    assert torch.allclose(odd.flatten(), torch.tensor([1.0, 3.5]))
    assert upsample_cells(torch.tensor([[7, 9]]).T, (5, 1)).flatten().tolist() == [7, 7, 7, 9, 9]
    assert grid_size((64, 64), 1.0) == (64, 64) and grid_size((64, 40), 0.01) == (1, 1)


def test_sampling_follows_the_policy_and_returns_its_log_probabilities() -> None:
    probs = torch.zeros(1, 3, 2, 2)
    probs[0, 2] = 1.0  # certain: always class 2
    actions, log_probs = sample_actions(probs, samples=5)
    assert actions.shape == log_probs.shape == (5, 1, 2, 2)
    assert (actions == 2).all() and torch.allclose(log_probs, torch.zeros_like(log_probs))
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    actions, log_probs = sample_actions(logits.softmax(1), samples=3)
    want = logits.log_softmax(1).unsqueeze(0).expand(3, -1, -1, -1, -1).gather(2, actions[:, :, None]).squeeze(2)
    assert torch.allclose(log_probs, want, atol=1e-5)
    log_probs.sum().backward()
    assert logits.grad.abs().sum() > 0


class FixedLogits(torch.nn.Module):
    """A 'segmenter' whose logits are parameters: the step's gradient lands on them directly."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.logits


def reward_batch(reference: torch.Tensor, tags: torch.Tensor | None = None) -> dict:
    b, h, w = reference.shape
    if tags is None:
        tags = torch.zeros(b, 4, dtype=torch.bool)
    return {"image": torch.zeros(b, 3, h, w), "label": reference, "tags": tags, "id": [f"im{i}" for i in range(b)]}


def step_context() -> StepContext:
    return StepContext(0, 1, SINGLE, [])


@pytest.mark.parametrize("level, psd, balance", [("pixel", False, False), ("pixel", False, True),
                                                 ("image", False, False), ("image", True, False)])
def test_reward_at_each_psr_scale(level: str, psd: bool, balance: bool) -> None:
    torch.manual_seed(0)
    reference = torch.zeros(2, 8, 8, dtype=torch.long)
    reference[:, :, 4:] = 1  # two halves: constant on every 4 x 4 (and 2 x 2) cell
    method = RSS(samples=4, reward={"level": level, "metric": "accuracy", "balance": balance},
                 psr_scales=[1.0, 0.5, 0.25], psd=psd)
    method.source = MaskReward("accuracy", 4)
    perfect = torch.nn.functional.one_hot(reference, 4).permute(0, 3, 1, 2).float() * 30
    terms = method.training_step(FixedLogits(perfect), reward_batch(reference), step_context())
    per_scale = [f"{key}_s{s}" for s in ("1", "0.5", "0.25") for key in ("reward", "reward_std", "adv_mean", "adv_std")]
    assert set(per_scale) | {"loss", "top_class_share"} == terms.keys()
    assert all(terms[k].item() == pytest.approx(1.0) for k in ("reward_s1", "reward_s0.5", "reward_s0.25"))
    assert terms["reward_std_s1"].item() == pytest.approx(0.0) and terms["top_class_share"].item() == 0.5
    net = FixedLogits(torch.zeros(2, 4, 8, 8))  # uniform policy: rewards vary, gradients flow
    terms = method.training_step(net, reward_batch(reference), step_context())
    assert 0.0 < terms["reward_s0.25"].item() < 1.0 and all(terms[f"adv_std_s{s}"].item() > 0 for s in ("1", "0.25"))
    if not psd:  # normalised over the group: mean 0 (PSD's raw differences need not be)
        assert terms["adv_mean_s0.5"].item() == pytest.approx(0.0, abs=1e-5)
    terms["loss"].backward()
    assert net.logits.grad.abs().sum() > 0


def test_policy_gradient_raises_the_probability_of_rewarded_actions() -> None:
    """A few plain SGD steps on the logits with pixel rewards must move the policy to the labels."""
    torch.manual_seed(0)
    reference = torch.randint(0, 3, (1, 6, 6))
    method = RSS(samples=8, reward={"level": "pixel"})
    method.source = MaskReward("miou", 3)
    net = FixedLogits(torch.zeros(1, 3, 6, 6))
    optimizer = torch.optim.SGD(net.parameters(), lr=50.0)
    for _ in range(20):
        optimizer.zero_grad()
        method.training_step(net, reward_batch(reference, torch.zeros(1, 3, dtype=torch.bool)),
                             step_context())["loss"].backward()
        optimizer.step()
    assert (net.logits.argmax(1) == reference).float().mean() > 0.9


# -- reward sources ---------------------------------------------------------------------------
def test_pseudo_and_gt_rewards_on_hand_made_maps() -> None:
    reference = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, IGNORE]]])  # (B=1, 2, 4)
    maps = torch.tensor([[[0, 0, 1, 2], [0, 1, 1, 2]]])[None]  # (N=1, B=1, 2, 4)
    batch = RewardBatch(reference, torch.zeros(1, 3, 2, 4), torch.zeros(1, 3, dtype=torch.bool), ["a"])
    hits, valid = MaskReward("miou", 3).pixel(maps, batch)
    assert hits[0, 0].tolist() == [[1, 1, 1, 0], [1, 0, 1, 0]] and valid[0, 0, 1, 3].item() is False
    accuracy, _ = MaskReward("accuracy", 3).image(maps, batch)
    assert accuracy.item() == pytest.approx(5 / 7)  # the 255 pixel is left out
    miou, ok = MaskReward("miou", 3).image(maps, batch)
    # background: 3 / 4, class 1: 2 / 4, class 2 (predicted only, labelled pixel): 0 / 1
    assert miou.item() == pytest.approx((3 / 4 + 2 / 4 + 0) / 3) and ok.item()
    # over the labels' classes only, class 2 (which they lack) costs only the pixels it takes
    miou_reference, _ = MaskReward("miou_reference", 3).image(maps, batch)
    assert miou_reference.item() == pytest.approx((3 / 4 + 2 / 4) / 2)
    unlabelled = RewardBatch(torch.full((1, 2, 4), IGNORE), batch.images, batch.tags, ["a"])
    assert not MaskReward("miou", 3).image(maps, unlabelled)[1].item()
    with pytest.raises(InputError, match="pseudo_labels: gt"):  # the ground truth is a label source now
        RewardSpec.from_options({"source": "gt"})


def test_tags_reward_prefers_exactly_the_tagged_classes() -> None:
    tags = torch.tensor([[False, True, False, True]])  # classes 1 and 3
    exact = torch.zeros(6, 6, dtype=torch.long)
    exact[:3, :3], exact[3:, 3:] = 1, 3
    extra = exact.clone()
    extra[0, 5] = 2  # a third class on 1/36 of the map, above min_area 0.01
    missing = exact.clone()
    missing[3:, 3:] = 0
    tiny = exact.clone()
    tiny[0, 5] = 2
    maps = torch.stack([exact, extra, missing])[:, None]
    scores = tag_jaccard(maps, tags, min_area=0.01)[:, 0]
    assert scores.tolist() == pytest.approx([1.0, 2 / 3, 1 / 2])
    assert tag_jaccard(tiny[None, None], tags, min_area=0.05).item() == 1.0  # below the area: not shown
    no_regions = torch.full((1, 6, 6), IGNORE)
    batch = RewardBatch(no_regions, torch.zeros(1, 3, 6, 6), tags, ["a"])
    rewards, valid = TagReward(min_area=0.01, cam_weight=0.5).image(maps, batch)
    assert rewards[0, 0] > rewards[1, 0] and rewards[0, 0] > rewards[2, 0] and valid.all()
    # the confident-region term: the map that agrees with the CAMs' confident pixels wins
    regions = exact[None].clone()
    regions[:, 3:, 3:] = IGNORE
    batch = RewardBatch(regions, batch.images, tags, ["a"])
    both, _ = TagReward(min_area=0.01, cam_weight=1.0).image(torch.stack([exact, missing, extra])[:, None], batch)
    assert both[0, 0] == both[1, 0] == 1.0 and both[2, 0] < 1.0  # only the region's pixels count
    with pytest.raises(ValueError, match="reward.source tags .* reward.level image"):
        RSS(reward={"source": "tags", "level": "pixel"})


def user_reward(action_map: torch.Tensor, image: torch.Tensor, tags: list[int], image_id: str) -> float:
    """A user's scorer: the share of the map showing the image's first tag."""
    assert image.shape[0] == 3 and isinstance(image_id, str)
    return float((action_map == tags[0]).float().mean())


def user_reward_per_pixel(action_map, image, tags, image_id):
    return (action_map == tags[0]).float()


def user_reward_wrong_shape(action_map, image, tags, image_id):
    return torch.zeros(3)


def test_user_reward_function() -> None:
    tags = torch.tensor([[False, False, True]])
    maps = torch.tensor([[[2, 2], [0, 2]]])[None]
    batch = RewardBatch(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 3, 2, 2), tags, ["img"])
    source = make_reward_source(RewardSpec(source="test_rss:user_reward"), 3)
    rewards, valid = source.image(maps, batch)
    assert rewards.tolist() == [[0.75]] and valid.all()
    per_pixel = make_reward_source(RewardSpec(source="test_rss:user_reward_per_pixel", level="pixel"), 3)
    assert per_pixel.pixel(maps, batch)[0][0, 0].tolist() == [[1.0, 1.0], [0.0, 1.0]]
    wrong = make_reward_source(RewardSpec(source="test_rss:user_reward_wrong_shape"), 3)
    with pytest.raises(ValueError, match=r"reward.source 'test_rss:user_reward_wrong_shape' returned shape \(3,\) "
                                         r"for image 'img'.*one number"):
        wrong.image(maps, batch)
    with pytest.raises(ValueError, match=r"reward.source 'no_such_module:f': cannot import module"):
        make_reward_source(RewardSpec(source="no_such_module:f"), 3)
    with pytest.raises(ValueError, match=r"reward.source 'test_rss:nothing': module 'test_rss' has no function"):
        make_reward_source(RewardSpec(source="test_rss:nothing"), 3)


# -- options, schema, optimiser ---------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    ({"psd": True, "reward": {"level": "pixel"}}, "psd .* reward.level image"),
    ({"psd": True, "samples": 1}, "samples >= 2"),
    ({"psr_scales": [1.5]}, "psr_scales"),
    ({"reward": {"sorce": "gt"}}, "reward: no option"),
    ({"reward": {"source": "magic"}}, "reward.source 'magic'"),
])
def test_bad_options_are_named(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_method("rss", options)


def test_schema_defaults_are_the_method_defaults() -> None:
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    block = next(rule["then"] for rule in schema["properties"]["variants"]["additionalProperties"]["allOf"]
                 if rule["if"]["properties"]["method"]["const"] == "rss")["properties"]
    method = RSS()
    for name in ("samples", "psr_scales", "psd", "sync_an", "last_layer_lr_factor"):
        assert block[name]["default"] == getattr(method, name), name
    for name, value in vars(RewardSpec()).items():
        prop = block["reward"]["properties"][name]
        if "default" in prop:
            assert prop["default"] == value, name
        else:  # no default filled in (the job's command stays as before the option): the text says it
            assert f"Left out: {value:g}" in " ".join(prop["description"].split()), name


def test_last_layer_gets_its_own_learning_rate() -> None:
    model = Segmenter(SegmenterSpec("resnet18", "sfpnext", num_classes=3))
    settings = TrainSettings(lr=0.01, head_lr_mult=10.0, optimizer="adamw")
    groups = RSS(last_layer_lr_factor=40.0).configure_optimizers(model, settings)[0].optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.1, 4.0])
    assert groups[2]["params"] == list(model.decoder.classifier.parameters())
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


# -- SFPNeXt ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["resnet18", "convnextv2_nano"])
def test_sfpnext_shapes(backbone: str) -> None:
    model = Segmenter(SegmenterSpec(backbone, "sfpnext", num_classes=5)).eval()
    with torch.no_grad():
        image = torch.randn(2, 3, 72, 100)  # non-square, not a multiple of 32
        assert model(image).shape == (2, 5, 72, 100)
        features = model.decoder.features(model.backbone(image))
    assert features.shape == (2, 128, 18, 25)  # stride 4


# -- the method through train_seg -------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    return toy_with_gt_labels(tmp_path_factory.mktemp("toy_rss"), num_train_aug=8, max_size=56)


def test_rss_trains_from_a_ce_cold_start_and_plots_its_curves(toy, tmp_path: Path) -> None:
    index, labels = toy
    ce = tmp_path / "ce"
    train_seg.main(cli_args(index, labels, ce, steps=2, decoder="sfpnext"))
    options = '{"samples": 2, "psr_scales": [1.0, 0.25], "psd": true, "last_layer_lr_factor": 40}'
    rss = tmp_path / "rss"
    train_seg.main(cli_args(index, labels, rss, steps=3, decoder="sfpnext", method="rss",
                            method_options=options, init_from_model=ce / "model.pt", outputs=rss / "outputs"))
    metrics = pd.read_csv(rss / "metrics.csv")
    assert {"reward_s1", "reward_s0.25", "adv_std_s1", "top_class_share", "lr_g2"} <= set(metrics.columns)
    assert metrics["reward_s1"].between(0, 1).all() and metrics["top_class_share"].between(0, 1).all()
    assert (metrics["lr_g2"] == metrics["lr_g1"] * 40).all()
    assert (rss / "outputs" / "rss_curves.png").is_file()
    _, meta = load_trained_model(rss / "model.pt", "cpu")
    assert meta["method"] == "rss" and meta["init"]["from"] == "model"




def test_a_variants_processes_start_its_segmenter_under_torchrun(tmp_path: Path) -> None:
    """SyncAN rows need several processes: `seg.processes` is that variant's train_seg `gpu`
    resource (torchrun), the other variants keep one, and the key never reaches the model flags."""
    pixel = {"method": "rss", "pseudo_labels": "none", "reward": {"level": "pixel"}}
    cfg = write_config(tmp_path / "config.yaml")
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "variants": {
        "rss_one": pixel, "rss_two": {**pixel, "seg": {"processes": 2, "train": {"batch_size": 2}}}}}))
    out = snakemake(tmp_path, "-n", "-p", "--cores", "2", config=cfg).stdout
    starts = {line.split("--out results/seg/")[1].split("/")[0]: line for line in out.splitlines()
              if "stages.train_seg" in line}
    assert "stages.launch --gpus 2 stages.train_seg" in starts["rss_two"]
    assert "stages.launch --gpus 1 stages.train_seg" in starts["rss_one"]
    assert "processes" not in starts["rss_two"] and "--batch-size 2" in starts["rss_two"]


def test_a_stray_sampled_class_costs_the_union_miou_more_than_all_background() -> None:
    """docs/methods/rss.md's cliff: on a toy-like image (one object on 17% of the pixels, 9
    classes), the right map with 1% of its pixels sampled at random scores below a deterministic
    all-background map under the usual per-map mIoU, and far above it over the mask's classes."""
    gen = torch.Generator().manual_seed(0)
    reference = torch.zeros(1, 96, 96, dtype=torch.long)
    reference[0, 30:70, 30:70] = 3
    noisy = torch.rand(20, 1, 96, 96, generator=gen) < 0.01
    right = torch.where(noisy, torch.randint(0, 9, (20, 1, 96, 96), generator=gen), reference)
    background = torch.zeros(1, 1, 96, 96, dtype=torch.long)
    batch = RewardBatch(reference, torch.zeros(1, 3, 96, 96), torch.zeros(1, 9, dtype=torch.bool), ["a"])
    union, ref = MaskReward("miou", 9), MaskReward("miou_reference", 9)
    assert union.image(background, batch)[0].item() == pytest.approx(ref.image(background, batch)[0].item())
    assert union.image(right, batch)[0].mean() < 0.6 * union.image(background, batch)[0].item()
    assert ref.image(right, batch)[0].mean() > 2 * ref.image(background, batch)[0].item()
