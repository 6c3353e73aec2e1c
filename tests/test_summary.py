"""summary: the table built from hand-written stage outputs, its Markdown, the plots, the per-class
IoU side by side and the methods' own reports."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages import summary
from stages.io.named_args import named_paths
from stages.reporting import diagnostics, per_class

BENCHMARK_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "best.json").write_text(json.dumps({"threshold": 0.26, "miou": 0.4125}))
    (tmp_path / "best_plmix.json").write_text(json.dumps({"threshold": 0.3, "miou": 0.45}))
    (tmp_path / "pseudo_none.csv").write_text("miou,miou_labelled,precision,coverage,n_images\n"
                                              "0.45,0.5,0.8,0.9,100\n")
    (tmp_path / "pseudo_plmix.csv").write_text("miou,miou_labelled,precision,coverage,fg_ratio,n_images\n"
                                               "0.48,0.55,0.82,0.85,1.25,100\n")  # pseudo_none: an older file
    (tmp_path / "rounds_plmix.csv").write_text(
        "round,label_threshold,paste_transform,loss,eval_threshold,eval_miou\n"
        "0,,,,0.26,0.4125\n1,0.26,False,1.2,0.28,0.43\n2,0.28,True,1.1,0.3,0.445\n")
    (tmp_path / "eval_ce.csv").write_text("mode,miou,pixel_acc,n_images\nsingle,0.6,0.9,50\n"
                                          "multiscale,0.62,0.91,50\n")
    (tmp_path / "eval_rss.csv").write_text("mode,miou,pixel_acc,fg_ratio,n_images\nsingle,0.64,0.9,0.8,50\n"
                                           "multiscale,0.65,0.91,0.9,50\nmultiscale+crf,0.67,0.92,0.95,50\n")
    (tmp_path / "train_cam.csv").write_text("step,epoch,loss,lr,img_per_s,skipped\n1,0,0.7,0.01,10,0\n"
                                            "2,0,0.6,0.005,11,0\n")
    (tmp_path / "train_ce.csv").write_text("step,epoch,loss,ce,lr,lr_g0,img_per_s,skipped\n"
                                           "1,0,2.0,2.0,0.01,0.01,5,0\n2,0,1.5,1.5,0.005,0.005,5,0\n")
    # per-class IoU: eval_pseudo's per refinement, evaluate's per variant; rss loses "dog"
    (tmp_path / "pseudo_class_none.csv").write_text("class,iou,iou_labelled\nbackground,0.8,0.85\n"
                                                    "cat,0.5,0.6\ndog,0.3,0.4\n")
    (tmp_path / "pseudo_class_plmix.csv").write_text("class,iou,iou_labelled\nbackground,0.82,0.86\n"
                                                     "cat,0.55,0.6\ndog,0.35,0.45\n")
    (tmp_path / "eval_class_ce.csv").write_text("class_index,class,single,multiscale\n0,background,0.85,0.86\n"
                                                "1,cat,0.6,0.61\n2,dog,0.3,0.32\n")
    # rss's file has evaluate's class histogram (ce's is from before it: the columns are absent)
    (tmp_path / "eval_class_rss.csv").write_text("class_index,class,single,multiscale,multiscale+crf,gt_share,"
                                                 "pred_share\n0,background,0.88,0.89,0.9,0.6,0.95\n"
                                                 "1,cat,0.7,0.71,0.72,0.3,0.05\n2,dog,0.01,0.02,0.02,0.1,0.0\n")
    (tmp_path / "outputs_rss").mkdir()  # a method that reports nothing the summary reads
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "train_cam.tsv").write_text(BENCHMARK_HEADER + "120.5\t0:02:00\t1\t1\t1\t1\t1\t1\t1\t1\n")
    (bench / "train_seg-ce.tsv").write_text(BENCHMARK_HEADER + "30.0\t0:00:30\t1\t1\t1\t1\t1\t1\t1\t1\n"
                                            "40.0\t0:00:40\t1\t1\t1\t1\t1\t1\t1\t1\n")
    return {"dir": tmp_path, "bench": bench}


def cli(d: Path) -> list[str]:
    return ["--cam-best", f"cam={d / 'best.json'}", f"plmix={d / 'best_plmix.json'}",
            "--pseudo", f"none={d / 'pseudo_none.csv'}", f"plmix={d / 'pseudo_plmix.csv'}",
            "--variant", f"ce={d / 'eval_ce.csv'}", f"rss={d / 'eval_rss.csv'}",
            "--train-metrics", f"cam={d / 'train_cam.csv'}", f"ce={d / 'train_ce.csv'}",
            "--refine-rounds", f"plmix={d / 'rounds_plmix.csv'}", "--cam-split", "train", "--seg-split", "val",
            "--pseudo-per-class", f"none={d / 'pseudo_class_none.csv'}", f"plmix={d / 'pseudo_class_plmix.csv'}",
            "--variant-per-class", f"ce={d / 'eval_class_ce.csv'}", f"rss={d / 'eval_class_rss.csv'}",
            "--variant-labels", "ce=plmix", "rss=none",
            "--method-outputs", f"ce={d / 'outputs_ce'}", f"rss={d / 'outputs_rss'}",
            "--variant-supervision", "ce=pseudo labels (plmix)", "rss=GT masks (ORACLE)",
            "--benchmarks", str(d / "benchmarks"), "--out-csv", str(d / "out" / "summary.csv"),
            "--out-per-class", str(d / "out" / "per_class.csv"),
            "--out-md", str(d / "out" / "summary.md"), "--out-plot-variants", str(d / "out" / "variants.png"),
            "--out-plot-curves", str(d / "out" / "curves.png")]


def test_table_contents(inputs) -> None:
    d = inputs["dir"]
    summary.main(cli(d))
    table = pd.read_csv(d / "out" / "summary.csv")
    assert table.columns.tolist() == summary.COLUMNS
    rows = {(r.stage, r.name): r for r in table.itertuples()}
    assert list(rows) == [("cam", "cam"), ("cam", "plmix"), ("refine", "plmix round 1"), ("refine", "plmix round 2"),
                          ("pseudo_labels", "none"), ("pseudo_labels", "plmix"),
                          ("segmentation", "ce"), ("segmentation", "rss"), ("train_cam", "-"),
                          ("train_seg", "ce")]
    cam = rows["cam", "cam"]
    assert cam.miou == 0.4125 and cam.threshold == 0.26 and cam.split == "train"
    assert (rows["refine", "plmix round 2"].miou, rows["refine", "plmix round 2"].threshold) == (0.445, 0.3)
    plmix = rows["pseudo_labels", "plmix"]
    assert (plmix.miou, plmix.miou_labelled, plmix.precision, plmix.coverage) == (0.48, 0.55, 0.82, 0.85)
    assert plmix.split == "train"
    ce, rss = rows["segmentation", "ce"], rows["segmentation", "rss"]
    assert ce.split == "val" and pd.isna(rows["train_cam", "-"].split)
    assert (ce.supervision, rss.supervision) == ("pseudo labels (plmix)", "GT masks (ORACLE)")
    assert (ce.miou, ce.miou_multiscale) == (0.6, 0.62) and pd.isna(ce.miou_multiscale_crf)
    assert (rss.miou, rss.miou_multiscale, rss.miou_multiscale_crf) == (0.64, 0.65, 0.67)
    assert rows["train_cam", "-"].seconds == 120.5
    assert rows["train_seg", "ce"].seconds == 35.0  # mean of a repeated benchmark
    assert pd.isna(rows["train_seg", "ce"].miou)

    md = (d / "out" / "summary.md").read_text().splitlines()
    start = md.index("| stage | name | split | supervision | miou | miou_labelled | miou_multiscale "
                     "| miou_multiscale_crf | precision | coverage | fg_ratio | threshold | seconds |")
    table_lines = md[start:md.index("", start)]
    assert len(table_lines) == 2 + 10
    assert "| pseudo_labels | plmix | train |  | 0.4800 | 0.5500 |  |  | 0.8200 | 0.8500 | 1.2500 |  |  |" \
        in table_lines
    assert "| pseudo_labels | none | train |  | 0.4500 | 0.5000 |  |  | 0.8000 | 0.9000 |  |  |  |" in table_lines
    # the single-scale row's ratio; ce's older metrics file has none
    assert "| segmentation | rss | val | GT masks (ORACLE) | 0.6400 |  | 0.6500 | 0.6700 |  |  | 0.8000 |" \
        in table_lines[9]
    assert any(line.startswith("| segmentation | ce |") and line.endswith("|  |  |  |  |") for line in table_lines)
    assert table_lines[-1].startswith("| train_seg | ce |") and table_lines[-1].endswith("| 35.0 |")
    notes = "\n".join(md[md.index("Columns:"):])
    assert "`miou`: pseudo labels: an ignored (255) pixel counts as background" in notes
    assert "`miou_labelled`: pseudo labels: labelled pixels only" in notes
    for png in ("variants.png", "curves.png"):
        with Image.open(d / "out" / png) as im:
            assert im.format == "PNG" and im.size[0] > 100


def test_scribble_rows_carry_their_density(tmp_path) -> None:
    (tmp_path / "eil").mkdir()
    (tmp_path / "eil" / "rounds.csv").write_text("round,step,precision,coverage\n0,0,1.0,0.0312\n1,60,0.9,0.2\n")
    labels = summary.supervision_labels({"eil": "scribbles (synthetic)", "eil_bare": "scribbles (dataset)",
                                         "ce": "pseudo labels (none)"},
                                        {"eil": tmp_path / "eil", "eil_bare": tmp_path / "none", "ce": tmp_path})
    assert labels == {"eil": "scribbles (synthetic), 3.1% of pixels", "eil_bare": "scribbles (dataset)",
                      "ce": "pseudo labels (none)"}


def test_columns_nobody_filled_are_dropped(inputs) -> None:
    d = inputs["dir"]
    table = summary.summary_table({"cam": d / "best.json"}, {}, {"ce": d / "eval_ce.csv"}, d / "missing",
                                  cam_split="train", seg_split="val")
    assert table.columns.tolist() == ["stage", "name", "split", "miou", "miou_multiscale", "threshold"]


def test_bad_inputs_are_named(inputs) -> None:
    d = inputs["dir"]
    with pytest.raises(ValueError, match="expected NAME=PATH"):
        named_paths(["nopath"], "--variant")
    with pytest.raises(ValueError, match="given twice"):
        named_paths(["a=x", "a=y"], "--variant")
    (d / "bad.csv").write_text("mode,score\nsingle,1\n")
    with pytest.raises(ValueError, match=r"bad\.csv: missing column\(s\) miou"):
        summary.variant_rows({"x": d / "bad.csv"}, "val")
    (d / "old.csv").write_text("miou,precision,coverage,n_images\n0.5,0.8,0.9,100\n")
    with pytest.raises(ValueError, match=r"old\.csv: no miou_labelled column: made by an older eval_pseudo"):
        summary.pseudo_rows({"none": d / "old.csv"}, "train")
    (inputs["bench"] / "broken-x.tsv").write_text("seconds\n1\n")
    with pytest.raises(ValueError, match=r"broken-x\.tsv: not a Snakemake benchmark"):
        summary.benchmark_rows(inputs["bench"])


def test_long_per_class_csv_has_a_row_per_variant_and_class(inputs) -> None:
    d = inputs["dir"]
    summary.main(cli(d))
    table = pd.read_csv(d / "out" / "per_class.csv")
    assert table.columns.tolist() == per_class.LONG_COLUMNS
    unknown = -1  # ce's file has no histogram: its shares are empty
    assert list(table.fillna(unknown).itertuples(index=False, name=None)) == [
        ("ce", "background", 0.82, 0.85, -1, -1, False), ("ce", "cat", 0.55, 0.6, -1, -1, False),
        ("ce", "dog", 0.35, 0.3, -1, -1, False), ("rss", "background", 0.8, 0.88, 0.95, 0.6, False),
        ("rss", "cat", 0.5, 0.7, 0.05, 0.3, False), ("rss", "dog", 0.3, 0.01, 0.0, 0.1, True)]
    md = (d / "out" / "summary.md").read_text()
    assert "| class | ce pseudo | ce pred | rss pseudo | rss pred | vanished in |" in md
    assert "| dog | 0.3500 | 0.3000 | 0.3000 | 0.0100 | rss |" in md
    assert "- ce: none\n- rss: dog\n" in md
    # one class on 95% of the pixels where the masks have 60% of it: named; ce has no histogram, no line
    assert ("Class histogram of the predictions (val, single scale):\n\n- rss: **COLLAPSED** to background on "
            "95% of the pixels (ground truth 60%); 2 of the 3 classes present predicted\n") in md
    # neither outputs folder holds a report (ce's is missing, rss's empty): said, not an error
    assert "No method report (pool_precision.csv, rounds.csv)" in md


def test_vanished_class_is_flagged_and_scribble_variants_show_pred_only(inputs) -> None:
    d = inputs["dir"]
    long = per_class.per_class_long({"rss": d / "eval_class_rss.csv", "eil": d / "eval_class_ce.csv"},
                                    {"none": d / "pseudo_class_none.csv"}, {"rss": "none"})
    assert long.loc[long["vanished"], ["variant", "class"]].values.tolist() == [["rss", "dog"]]
    assert long.loc[long["variant"] == "eil", "pseudo_iou"].isna().all()
    md = per_class.per_class_markdown(long, "train", "val")
    assert "| class | rss pseudo | rss pred | eil pred | vanished in |" in md
    assert "| dog | 0.3000 | 0.0100 | 0.3000 | rss |" in md
    assert "| cat | 0.5000 | 0.7000 | 0.6000 |  |" in md
    assert "- rss: dog\n- eil: no pseudo labels to compare with\n" in md
    with pytest.raises(ValueError, match="no per-class CSV of its pseudo labels 'plmix'"):
        per_class.per_class_long({"rss": d / "eval_class_rss.csv"}, {}, {"rss": "plmix"})
    (d / "eval_class_other.csv").write_text("class_index,class,single\n0,background,0.9\n1,bird,0.5\n")
    with pytest.raises(ValueError, match="different classes"):
        per_class.per_class_long({"x": d / "eval_class_other.csv"}, {"none": d / "pseudo_class_none.csv"},
                                 {"x": "none"})


def test_ugrl_and_eil_reports_become_tables(tmp_path: Path) -> None:
    """The files the methods' own writers leave (hand-made records), read back into summary.md."""
    from stages.methods.eil.report import write_table
    from stages.methods.ugrl.report import write_outputs

    ugrl, eil = tmp_path / "ugrl", tmp_path / "eil"
    ugrl.mkdir()
    eil.mkdir()
    nan = float("nan")
    history = [{"step": s, "counts": [9.0, 10.0, 15.0, 20.0], "u": [0.1, 0.2 * s, nan if s == 4 else 0.05]}
               for s in range(1, 5)]
    # sampled pixels: cat's certain half right, its uncertain half wrong; background right throughout
    n = 60
    samples = np.c_[np.r_[np.zeros(n), np.ones(n)], np.r_[np.linspace(0, 1, n), np.linspace(0, 1, n)],
                    np.r_[np.ones(n), np.arange(n) >= n // 2], np.r_[np.arange(n) >= 48, np.arange(n) >= 48]]
    write_outputs(history, ["background", "cat", "dog"], ugrl, samples, np.eye(3))
    write_table([{"round": 0, "step": 0, "precision": 0.95, "coverage": 0.05},
                 {"round": 1, "step": 3, "radius": 15.0, "reward": 0.2, "adopted": 0.5, "pixels_added": 100,
                  "precision": 0.9, "coverage": 0.3}], eil)
    md = diagnostics.diagnostics_markdown({"ce": tmp_path / "missing", "ugrl": ugrl, "eil": eil})
    assert ("| variant | steps | pool_precision | labelled_precision | pool_share | auroc | top20 | bottom20 | "
            "classes_pool_better | most_uncertain_at_end |") in md
    # last quarter of 4 steps = step 4: dog has no value there and is not named. Ranked within their
    # class, cat's right pixels sit above its wrong ones (900 pairs ordered) and background's (all
    # right) everywhere (1350 of 1800 pairs ordered, ties half): AUROC 2250 / 2700 = 5/6
    assert "| ugrl | 4 | 0.9000 | 0.7500 | 0.5000 | 0.8333 | 1.0000 | 0.5000 | 1/2 | cat 0.80, background 0.10 |" in md
    assert (ugrl / "mechanism.png").is_file() and (ugrl / "prototype_cosine.csv").is_file()
    assert "| variant | round | step | precision | coverage | adopted |" in md
    assert "| eil | 0 | 0 | 0.9500 | 0.0500 |  |" in md
    assert "| eil | 1 | 3 | 0.9000 | 0.3000 | 0.5000 |" in md
    assert "| ce |" not in md


def test_missing_or_partial_reports_are_tolerated(tmp_path: Path) -> None:
    (tmp_path / "ugrl").mkdir()
    (tmp_path / "ugrl" / "pool_precision.csv").write_text(
        "step,pool_correct,pool_known,labelled_correct,labelled_known,pool_precision,labelled_precision\n"
        "1,0,0,3,4,,0.75\ntotal,0,0,3,4,,0.75\n")  # an empty pool, no uncertainty file
    md = diagnostics.diagnostics_markdown({"ugrl": tmp_path / "ugrl", "ce": tmp_path / "nothing"})
    assert "| ugrl | 1 |  | 0.7500 | 0.0000 |  |" in md
    assert diagnostics.diagnostics_markdown({}).endswith("in the variants' outputs folders.\n")
    (tmp_path / "eil").mkdir()
    (tmp_path / "eil" / "rounds.csv").write_text("round,step\n0,0\n")
    with pytest.raises(ValueError, match=r"rounds\.csv: missing column\(s\) precision, coverage"):
        diagnostics.diagnostics_markdown({"eil": tmp_path / "eil"})


def test_timing_rows_named_like_a_stage_get_no_bar(inputs) -> None:
    """The pseudo_labels rule's benchmark is a row of stage pseudo_labels holding seconds only:
    the plot drew it as an empty bar "pseudo labels none-train_aug"."""
    bench = inputs["bench"]
    (bench / "pseudo_labels-none-train_aug.tsv").write_text(BENCHMARK_HEADER + "9.0\t0:00:09\t1\t1\t1\t1\t1\t1\t1\t1\n")
    d = inputs["dir"]
    table = summary.summary_table({"cam": d / "best.json"}, {"none": d / "pseudo_none.csv"},
                                  {"ce": d / "eval_ce.csv"}, bench, cam_split="train", seg_split="val")
    assert ("pseudo_labels", "none-train_aug") in set(zip(table["stage"], table["name"]))
    labels = summary.scored_rows(table, ["cam", "pseudo_labels"])
    assert list(zip(labels["stage"], labels["name"])) == [("cam", "cam"), ("pseudo_labels", "none")]


def test_one_foreground_class_is_named_where_background_hides_it(tmp_path: Path) -> None:
    """VOC's image-level RSS rows call every object "dog" behind a background near its true share:
    the all-pixel test cannot see it, the foreground test names it; an honest mix is not named."""
    shares = {"cat_only": ([0.7, 0.3, 0.0], [0.6, 0.2, 0.2]),  # every predicted object a cat
              "mixed": ([0.7, 0.2, 0.1], [0.6, 0.2, 0.2]),
              "one_in_masks": ([0.7, 0.3, 0.0], [0.6, 0.4, 0.0])}  # the masks show one class only
    paths = {}
    for variant, (pred, gt) in shares.items():
        classes = zip(["background", "cat", "dog"], pred, gt)
        rows = "".join(f"{i},{c},0.5,{g},{p}\n" for i, (c, p, g) in enumerate(classes))
        paths[variant] = tmp_path / f"{variant}.csv"
        paths[variant].write_text("class_index,class,single,gt_share,pred_share\n" + rows)
    lines = per_class.histogram_lines(per_class.per_class_long(paths, {}, {}))
    assert lines == [
        "- cat_only: background on 70% of the pixels (ground truth 60%); 2 of the 3 classes present predicted; "
        "**ONE FOREGROUND CLASS**: cat on 100% of the predicted foreground (ground truth 50%)",
        "- mixed: background on 70% of the pixels (ground truth 60%); 3 of the 3 classes present predicted",
        "- one_in_masks: background on 70% of the pixels (ground truth 60%); 2 of the 2 classes present predicted"]
