"""The workflow as a user runs it: dry runs of the DAG, then one tiny run end to end."""
import json
import re

import pandas as pd
import pytest
import yaml

from conftest import REPO, planned_jobs, snakemake, write_config
from stages.io.cam_store import CamReader

TRUNK = {"prepare_dataset", "check_dataset", "train_cam", "infer_cam", "eval_cam", "pseudo_labels",
         "eval_pseudo", "cam_panels", "refine_plmix"}


def test_default_config_plans_the_whole_dag(tmp_path):
    jobs = planned_jobs(tmp_path, REPO / "config.yaml")
    views = {"summary", "browse", "devices", "all"}
    assert TRUNK | {"refine_plmix", "scribbles", "train_seg", "evaluate"} | views == set(jobs)
    # raw and PL-Mix CAMs: each refinement has its own CAM file and pseudo labels (PL-Mix writes
    # its CAM file with its network: infer_cam runs once); one segmenter per method (ce on each
    # refinement, ugrl, rss, eil)
    assert jobs["infer_cam"] == 1 and jobs["pseudo_labels"] == jobs["eval_cam"] == 2
    assert jobs["train_seg"] == 5


def test_jobs_after_train_cam_run_side_by_side_on_few_cores_in_the_configured_precision(tmp_path):
    """On 2 cores every job after train_cam takes one thread, so two run at once; on 8, more each.
    Every stage that runs a network gets the config's precision."""
    def threads(cores: str) -> dict[str, set[str]]:
        out = snakemake(tmp_path, "-n", "-p", "--cores", cores, config=REPO / "config.yaml").stdout
        with_device = [line for line in out.splitlines() if "--device" in line]
        assert len(with_device) >= 10 and all("--device auto --precision auto" in line for line in with_device)
        seen: dict[str, set[str]] = {}
        pattern = r"OMP_NUM_THREADS=(\d+) python -m (?:stages\.launch --gpus \d+ )?stages\.(\w+)"
        for n, stage in re.findall(pattern, out):
            seen.setdefault(stage, set()).add(n)
        return seen

    two, eight = threads("2"), threads("8")
    assert two["train_cam"] == {"2"} and two["train_seg"] == two["evaluate"] == two["refine"] == {"1"}
    assert eight["train_cam"] == eight["train_seg"] == eight["refine"] == {"4"} and eight["pseudo_labels"] == {"4"}


def test_channels_last_and_the_crf_scale_reach_every_stage_that_uses_them(tmp_path):
    """The config's channels_last and the CRF's scale become flags of the commands, none forgotten;
    a PL-Mix refinement's crf_scale replaces the scale in its own rounds only."""
    plmix = yaml.safe_load((REPO / "tests" / "config" / "tiny.yaml").read_text())["refinements"]["plmix"]
    cfg = write_config(tmp_path / "fast.yaml", channels_last=True, pseudo_labels={"crf": {"scale": 0.33}},
                       refinements={"plmix": {**plmix, "crf_scale": 0.5}})
    out = snakemake(tmp_path, "-n", "-p", "--cores", "2", config=cfg).stdout
    with_device = [line for line in out.splitlines() if "--device" in line]
    assert len(with_device) >= 10 and all("--channels-last" in line for line in with_device)
    with_crf = [line for line in out.splitlines() if "--bilateral-sxy" in line]
    stages = {line: re.findall(r"stages\.(?!launch\b)(\w+)", line)[0] for line in with_crf}
    assert {"pseudo_labels", "refine", "refine_irn"} <= set(stages.values())
    for line, stage in stages.items():
        if stage != "evaluate":
            assert f"--scale {0.5 if stage == 'refine' else 0.33} " in line, line
    assert "--crf-scale" not in out


def test_slurm_profile_plans_the_same_dag(tmp_path):
    local = planned_jobs(tmp_path, REPO / "config.yaml")
    assert planned_jobs(tmp_path, REPO / "config.yaml", "--profile", "slurm") == local


def test_two_variants_share_the_trunk(tmp_path):
    def exactly(name, variants):  # write_config merges variants into the tiny config's
        path = write_config(tmp_path / name)
        config = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump({**config, "variants": variants}, sort_keys=False))
        return path

    one = planned_jobs(tmp_path, exactly("one.yaml", {"ce": {"method": "ce", "pseudo_labels": "none"}}))
    jobs = planned_jobs(tmp_path, exactly("two.yaml", {
        "ce": {"method": "ce", "pseudo_labels": "none"},
        "ce_b": {"method": "ce", "pseudo_labels": "none"}}))
    assert jobs["train_seg"] == 2 and jobs["evaluate"] == 2
    assert all(jobs[rule] == one[rule] for rule in TRUNK)


@pytest.mark.workflow
def test_end_to_end_outputs(tiny_run):
    workdir, _ = tiny_run
    results = workdir / "results"
    for path in ["cam/model.pt", "cam/cams_train_aug.h5", "cam/eval/sweep.csv", "cam/eval/best.json",
                 "pseudo_labels/none/eval/summary.csv", "seg/ce/model.pt", "eval/ce/metrics.csv",
                 "summary/summary.csv", "summary/summary.md", "summary/variants.png",
                 "summary/curves.png", "devices.json"]:
        assert (results / path).is_file(), path
    assert len(list((results / "pseudo_labels/none/train_aug").glob("*.png"))) == 24
    assert len(list((results / "cam/panels").glob("*.png"))) == 2
    metrics = pd.read_csv(results / "eval/ce/metrics.csv")
    assert metrics["miou"].between(0, 1).all()
    # IRN after PL-Mix: its walked CAMs, its own sweep and pseudo labels, in the summary
    with CamReader(results / "refine/plmix_irn/cams_train_aug.h5") as reader:
        assert len(reader) == 24 and json.loads(reader.meta.refinement)["method"] == "irn"
    assert len(list((results / "pseudo_labels/plmix_irn/train_aug").glob("*.png"))) == 24
    summary = (results / "summary/summary.csv").read_text()
    assert "plmix_irn" in summary
    table = pd.read_csv(results / "summary/summary.csv")
    supervision = table[table["stage"] == "segmentation"].set_index("name")["supervision"]
    assert supervision["ce"] == "pseudo labels (none)" and supervision["ugrl"] == "pseudo labels (plmix)"
    assert supervision["eil"].startswith("scribbles (synthetic), ") and supervision["eil"].endswith("% of pixels")
    # evaluation.fit: each segmenter also scored on the images it was fitted on, one point each
    curve = pd.read_csv(results / "summary/budget_curve.csv").set_index("variant")
    assert set(curve.index) == set(yaml.safe_load((workdir / "config.yaml").read_text())["variants"])
    assert curve.loc["ce", "train_miou"] == pd.read_csv(results / "eval/ce/fit/metrics.csv")["miou"].iloc[0]
    labels = pd.read_csv(results / "pseudo_labels/none/eval/summary.csv")
    assert curve.loc["ce", "labels_train_miou"] == labels["miou"].iloc[0]
    # nothing is left to do after a complete run
    assert planned_jobs(workdir, workdir / "config.yaml") == {}


@pytest.mark.workflow
def test_adding_a_variant_reruns_only_that_variant_and_the_views_of_all(tiny_run):
    workdir, cfg = tiny_run
    variants = yaml.safe_load(cfg.read_text())["variants"]
    cfg = write_config(workdir / "more.yaml", variants={**variants, "ce_c": {"method": "ce", "pseudo_labels": "none"}})
    assert planned_jobs(workdir, cfg) == {"train_seg": 1, "evaluate": 1, "evaluate_fit": 1, "summary": 1,
                                          "budget_curve": 1, "browse": 1, "all": 1}


@pytest.mark.workflow
def test_removing_a_variant_reruns_only_the_summary_and_the_browser(tiny_run):
    workdir, cfg = tiny_run
    config = yaml.safe_load(cfg.read_text())
    del config["variants"]["ce_b"]
    (workdir / "fewer.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert planned_jobs(workdir, workdir / "fewer.yaml") == {"summary": 1, "budget_curve": 1, "browse": 1, "all": 1}


@pytest.mark.workflow
def test_the_same_settings_in_another_order_rerun_nothing(tiny_run):
    workdir, cfg = tiny_run
    config = yaml.safe_load(cfg.read_text())
    reordered = {section: dict(reversed(value.items())) if isinstance(value, dict) else value
                 for section, value in reversed(config.items())}
    reordered["cam"]["train"] = dict(reversed(config["cam"]["train"].items()))
    (workdir / "reordered.yaml").write_text(yaml.safe_dump(reordered, sort_keys=False))
    assert planned_jobs(workdir, workdir / "reordered.yaml") == {}


@pytest.mark.workflow
def test_changing_a_seg_hyperparameter_keeps_the_cam_trunk(tiny_run):
    workdir, _ = tiny_run
    cfg = write_config(workdir / "lr.yaml", seg={"backbone": "resnet18", "train": {
        "crop_size": 64, "batch_size": 4, "steps": 6, "checkpoint_every": 3, "lr": 0.02}})
    jobs = planned_jobs(workdir, cfg)
    assert not (TRUNK & set(jobs)), jobs
    assert jobs["train_seg"] == len(yaml.safe_load(cfg.read_text())["variants"])  # every variant reads seg.train


@pytest.mark.workflow
def test_pseudo_labels_cut_each_cam_file_at_its_own_best_threshold(tiny_run):
    """Raw and PL-Mix CAMs get a sweep each; each pseudo-label job reads its own file's best."""
    workdir, cfg = tiny_run
    results = workdir / "results"
    for refinement, run in (("none", "cam"), ("plmix", "refine/plmix"), ("plmix_irn", "refine/plmix_irn")):
        best = json.loads((results / run / "eval" / "best.json").read_text())["threshold"]
        log = (results / "logs" / "pseudo_labels" / f"{refinement}-train_aug.log").read_text()
        assert f"(threshold {best:.3f}," in log, (refinement, best, log[-300:])
    commands = snakemake(workdir, "-n", "-p", "--cores", "1", "--forcerun", "pseudo_labels", config=cfg).stdout
    plmix = next(line for line in commands.splitlines()
                 if "stages.pseudo_labels" in line and "refine/plmix/cams" in line)
    assert "--best results/refine/plmix/eval/best.json" in plmix
    summary = pd.read_csv(results / "summary" / "summary.csv")
    assert set(summary[summary["stage"] == "cam"]["name"]) == {"cam", "plmix", "plmix_irn"}
