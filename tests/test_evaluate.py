"""evaluate: metrics against hand-computed matrices, multi-scale + flip, CRF, and the stage end to end."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from stages import evaluate
from stages.data.tensors import to_tensor
from stages.data.toy import generate_toy
from stages.io.checkpoint import save_checkpoint
from stages.labels.crf import CRFParams
from stages.models.segmenter import Segmenter, SegmenterSpec
from stages.runtime.distributed import DistContext

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
CRF = CRFParams(iterations=5, gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=40, bilateral_srgb=13,
                bilateral_compat=10)


def test_streaming_metrics_match_hand_computed() -> None:
    result = evaluate.StreamingEvaluation(["a", "b"], num_classes=3)
    gt1 = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
    gt2 = np.array([[2, 2]], dtype=np.uint8)
    result.update(gt1, {"a": np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8), "b": gt1.copy()})
    result.update(gt2, {"a": np.array([[2, 0]], dtype=np.uint8), "b": gt2.copy()})
    # mode a, rows = truth, columns = prediction (the 255 pixel is skipped):
    #   0: [1, 1, 0]   1: [0, 2, 0]   2: [1, 0, 2]
    # IoU: 0 -> 1/(2+2-1) = 1/3, 1 -> 2/(2+3-2) = 2/3, 2 -> 2/(3+2-2) = 2/3
    metrics = result.metrics().set_index("mode")
    assert metrics.loc["a", "miou"] == pytest.approx((1 / 3 + 2 / 3 + 2 / 3) / 3)
    assert metrics.loc["a", "pixel_acc"] == pytest.approx(5 / 7)
    assert metrics.loc["b", "miou"] == 1.0 and metrics.loc["b", "n_images"] == 2
    per_class = result.per_class(["bg", "x", "y"])
    assert list(per_class.columns) == ["class_index", "class", "a", "b", "gt_share", "pred_share"]
    assert per_class["a"].tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    # mode a's column sums (predicted 2, 3, 2 of the 7 valid pixels) beside the row sums (2, 2, 3)
    assert per_class["pred_share"].tolist() == pytest.approx([2 / 7, 3 / 7, 2 / 7])
    assert per_class["gt_share"].tolist() == pytest.approx([2 / 7, 2 / 7, 3 / 7])
    with pytest.raises(ValueError, match="modes"):
        result.update(gt2, {"a": gt2})


class PixelLinear(nn.Module):
    """A per-pixel classifier: mirroring its input mirrors its output exactly."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class LeftLooking(PixelLinear):
    """Looks at its left neighbour only, so a flipped pass genuinely differs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.roll(x, shifts=1, dims=-1))


def random_image(h: int = 20, w: int = 28) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_flip_average_is_mirrored_back() -> None:
    image = random_image()
    single, multi = evaluate.predict_probs(PixelLinear().eval(), image, [1.0], True, CPU)
    assert torch.allclose(single, multi, atol=1e-6)

    model = LeftLooking().eval()
    single, multi = evaluate.predict_probs(model, image, [1.0], True, CPU)
    x = to_tensor(image).unsqueeze(0)
    with torch.no_grad():
        expected = (model(x).softmax(1) + model(x.flip(-1)).flip(-1).softmax(1))[0] / 2
    assert torch.allclose(multi, expected, atol=1e-6)
    assert not torch.allclose(single, multi, atol=1e-3)


def test_multiscale_probabilities_are_distributions() -> None:
    image = random_image(33, 47)
    model = Segmenter(SegmenterSpec("resnet18", "mlp", num_classes=4)).eval()
    single, multi = evaluate.predict_probs(model, image, [0.75, 1.0, 1.5], True, CPU)
    assert single.shape == multi.shape == (4, 33, 47)
    assert torch.allclose(multi.sum(0), torch.ones(33, 47), atol=1e-5)


def test_crf_only_uses_background_and_predicted_classes() -> None:
    image = np.zeros((24, 24, 3), dtype=np.uint8)
    image[:, 12:] = 200
    probs = np.full((5, 24, 24), 0.1, dtype=np.float32)
    probs[3, :, 11:] = 0.6  # class 3 on the bright half (one column too far), background elsewhere
    probs[0, :, :11] = 0.6
    labels = evaluate.crf_labels(image, probs, CRF)
    assert set(np.unique(labels)) == {0, 3}
    assert (labels[:, 14:] == 3).all() and (labels[:, :9] == 0).all()


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory) -> tuple[Path, Path]:
    """(index.json, model file): an untrained segmenter saved in train_seg's format."""
    root = tmp_path_factory.mktemp("toy")
    index = generate_toy(root / "data", num_classes=3, num_train_aug=4, num_train=2, num_val=3,
                         min_size=40, max_size=56, seed=1)
    index.save(root / "index.json")
    torch.manual_seed(0)
    model = Segmenter(SegmenterSpec("resnet18", "aspp", index.num_classes))
    meta = {"method": "ce", "method_options": {}, "backbone": "resnet18", "weights": "none",
            "decoder": "aspp", "classes": index.classes, "dataset": "toy"}
    save_checkpoint(root / "model.pt", {"model": model.state_dict(), "meta": meta})
    return root / "index.json", root / "model.pt"


def stage_args(index: Path, model: Path, out: Path, crf: bool) -> list[str]:
    argv = ["--index", str(index), "--checkpoint", str(model), "--split", "val",
            "--scales", "1.0", "0.75", "1.25", "--flip", "--crf" if crf else "--no-crf", "--panels", "2",
            "--out-metrics", str(out / "metrics.csv"), "--out-per-class", str(out / "per_class.csv"),
            "--out-predictions", str(out / "pred"), "--out-panels", str(out / "panels"), "--device", "cpu"]
    if crf:
        argv += ["--iterations", "3", "--gaussian-sxy", "3", "--gaussian-compat", "3", "--bilateral-sxy", "40",
                 "--bilateral-srgb", "13", "--bilateral-compat", "10"]
    return argv


@pytest.mark.parametrize("crf", [False, True])
def test_stage_end_to_end(toy_model, tmp_path: Path, crf: bool) -> None:
    index, model = toy_model
    evaluate.main(stage_args(index, model, tmp_path, crf))
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    modes = ["single", "multiscale"] + (["multiscale+crf"] if crf else [])
    assert metrics["mode"].tolist() == modes
    assert metrics["miou"].between(0, 1).all() and (metrics["n_images"] == 3).all()
    per_class = pd.read_csv(tmp_path / "per_class.csv")
    assert per_class["class"].tolist()[0] == "background" and len(per_class) == 4
    assert set(modes) <= set(per_class.columns)
    predictions = sorted((tmp_path / "pred").glob("*.png"))
    assert len(predictions) == 3
    with Image.open(predictions[0]) as im:
        assert im.mode == "P"
    assert len(list((tmp_path / "panels").glob("*.png"))) == 2
    assert not list(tmp_path.glob(".*tmp*")), "temporary folders left behind"


def test_one_scale_without_flip_scores_the_single_pass_only(toy_model, tmp_path: Path) -> None:
    index, model = toy_model
    argv = stage_args(index, model, tmp_path, crf=False)
    start = argv.index("--scales")
    argv[start:start + 5] = ["--scales", "1.0", "--no-flip"]
    evaluate.main(argv)
    assert pd.read_csv(tmp_path / "metrics.csv")["mode"].tolist() == ["single"]
    assert "multiscale" not in pd.read_csv(tmp_path / "per_class.csv").columns


def test_stage_refuses_other_class_list_and_half_crf_params(toy_model, tmp_path: Path, capsys) -> None:
    index, model = toy_model
    with pytest.raises(SystemExit):
        evaluate.main(stage_args(index, model, tmp_path, crf=True)[:-2])
    assert "--crf: dense CRF needs --bilateral-compat" in capsys.readouterr().err
    other = tmp_path / "other.json"
    text = index.read_text().replace('"background"', '"sky"')
    other.write_text(text)
    with pytest.raises(ValueError, match=r"model\.pt.*classes"):
        evaluate.main(stage_args(other, model, tmp_path, crf=False))
    assert not (tmp_path / "metrics.csv").exists()
