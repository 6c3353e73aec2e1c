"""The budget curve (evaluation.fit): fitted-image scoring, grouping by steps, the table and plot."""
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import snakemake, write_config
from stages import budget_curve
from stages.errors import InputError

VARIANTS = {
    "ce": {"method": "ce", "pseudo_labels": "none"},
    "ce_12": {"method": "ce", "pseudo_labels": "none", "seg": {"train": {"steps": 12, "checkpoint_every": 4}}},
    "ce_mlp": {"method": "ce", "pseudo_labels": "none", "seg": {"decoder": "mlp"}},
    "ce_ORACLE_gt": {"method": "ce", "pseudo_labels": "gt"},
}


def _dry_run(tmp_path, fit: bool) -> str:
    cfg = write_config(tmp_path / "config.yaml", evaluation={"scales": [1.0], "panels": 2, "fit": fit})
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "variants": VARIANTS}))  # these alone
    return snakemake(tmp_path, "-n", "-p", "--cores", "1", config=cfg).stdout


def test_fit_adds_fitted_image_scores_and_a_curve_per_setting(tmp_path):
    out = _dry_run(tmp_path, fit=True)
    fits = [line for line in out.splitlines() if "stages.evaluate" in line and "/fit/metrics.csv" in line]
    assert len(fits) == len(VARIANTS)
    assert all("--split train " in line and "--fit" not in line.split("--out-metrics")[0] for line in fits)
    curve = next(line for line in out.splitlines() if "stages.budget_curve" in line)
    points = curve.split("--point ")[1].split(" --val")[0].split()
    # only steps (and checkpoint_every) differ between ce and ce_12; another decoder is another curve
    assert sorted(points) == ["ce=ce:6", "ce_12=ce:12", "ce_ORACLE_gt=ce_ORACLE_gt:6", "ce_mlp=ce_mlp:6"]
    # the labels' own train mIoU for pseudo-label curves; none for the masks
    assert "--labels ce=results/pseudo_labels/none/eval/summary.csv ce_mlp=" in curve
    assert "ce_ORACLE_gt=results/pseudo_labels" not in curve


def test_without_fit_nothing_extra_runs(tmp_path):
    out = _dry_run(tmp_path, fit=False)
    assert "evaluate_fit" not in out and "budget_curve" not in out


def _metrics(path, miou, fg_ratio=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"mode": "single", "miou": miou, "pixel_acc": 0.5, "fg_ratio": fg_ratio, "n_images": 3},
                  {"mode": "multiscale", "miou": 0.9, "pixel_acc": 0.9, "fg_ratio": 9.0, "n_images": 3}]
                 ).to_csv(path, index=False)
    return path


def test_stage_writes_table_and_plot(tmp_path):
    val = {v: _metrics(tmp_path / v / "val.csv", m) for v, m in (("a", 0.2), ("a_600", 0.3), ("gt", 0.4))}
    fit = {v: _metrics(tmp_path / v / "fit.csv", m, r) for v, m, r in (("a", 0.25, 0.5), ("a_600", 0.35, 0.75),
                                                                        ("gt", 0.6, 1.0))}
    labels = tmp_path / "labels.csv"
    pd.DataFrame([{"miou": 0.5, "miou_labelled": 0.55, "precision": 0.8, "coverage": 0.9, "fg_ratio": 1.25}]
                 ).to_csv(labels, index=False)
    out_csv, out_png = tmp_path / "curve.csv", tmp_path / "curve.png"
    budget_curve.main(["--point", "a_600=a:600", "a=a:300", "gt=gt:300",
                       "--val", *(f"{v}={p}" for v, p in val.items()),
                       "--fit", *(f"{v}={p}" for v, p in fit.items()),
                       "--labels", f"a={labels}", "--out-csv", str(out_csv), "--out-png", str(out_png)])
    table = pd.read_csv(out_csv)
    assert table[["curve", "variant", "steps"]].values.tolist() == [["a", "a", 300], ["a", "a_600", 600],
                                                                   ["gt", "gt", 300]]
    assert table["val_miou"].tolist() == [0.2, 0.3, 0.4] and table["train_miou"].tolist() == [0.25, 0.35, 0.6]
    assert table["train_fg_ratio"].tolist() == [0.5, 0.75, 1.0]  # the single-scale row's
    for column, value in (("labels_train_miou", 0.5), ("labels_fg_ratio", 1.25)):
        assert table[column].iloc[:2].tolist() == [value, value] and table[column].isna().iloc[2]
    with Image.open(out_png) as image:
        assert image.size[0] > 300


def test_missing_fit_metrics_are_named(tmp_path):
    val = _metrics(tmp_path / "val.csv", 0.2)
    with pytest.raises(InputError, match="no --val or --fit file for b"):
        budget_curve.budget_table({"a": ("a", 3), "b": ("a", 6)}, {"a": val, "b": val}, {"a": val}, {})


@pytest.mark.parametrize("spec", ["a=6", "a=x:y", "a=:6"])
def test_bad_point_is_named(spec):
    with pytest.raises(InputError, match="VARIANT=CURVE:STEPS"):
        budget_curve.parse_points([spec])
