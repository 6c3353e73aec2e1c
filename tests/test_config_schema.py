"""The config schema: mistakes stop the run before any job and name the key; defaults fill in."""
import pytest
import yaml

from conftest import REPO, TINY_CONFIG, snakemake, write_config


def _dry_run_error(tmp_path, **overrides) -> str:
    cfg = write_config(tmp_path / "config.yaml", **overrides)
    proc = snakemake(tmp_path, "-n", "--cores", "1", config=cfg, check=False)
    assert proc.returncode != 0, "a bad config must stop the run"
    assert "Job stats" not in proc.stdout
    return proc.stdout + proc.stderr


def test_typo_in_key_is_named(tmp_path):
    msg = _dry_run_error(tmp_path, cam={"backbone": "resnet18", "train": {"stpes": 5}})
    assert "stpes" in msg and "train" in msg


def test_wrong_type_names_key_and_expectation(tmp_path):
    msg = _dry_run_error(tmp_path, cam={"train": {"steps": "many"}})
    assert "'many' is not of type 'integer'" in msg and "steps" in msg


def test_unknown_top_level_section(tmp_path):
    assert "segmenter" in _dry_run_error(tmp_path, segmenter={"backbone": "x"})


def test_unknown_method_names_variant(tmp_path):
    msg = _dry_run_error(tmp_path, variants={"mine": {"method": "magic", "pseudo_labels": "none"}})
    assert "variants.mine" in msg and "magic" in msg


def test_variant_reading_missing_refinement_names_variant(tmp_path):
    msg = _dry_run_error(tmp_path, variants={"ce2": {"method": "ce", "pseudo_labels": "other"}})
    assert "variants.ce2" in msg and "other" in msg


def test_unknown_method_option_names_variant_and_option(tmp_path):
    msg = _dry_run_error(tmp_path, variants={"ce": {"method": "ce", "pseudo_labels": "none", "lr": 0.1}})
    assert "variants.ce" in msg and "'lr' was unexpected" in msg


def test_defaults_fill_every_key():
    from snakemake.utils import validate

    config = yaml.safe_load(TINY_CONFIG.read_text())
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    assert config["cam"]["train"]["optimizer"] == "sgd"
    assert config["cam"]["train"]["steps"] == 6  # the file's value wins over the default
    assert config["pseudo_labels"]["crf"]["bilateral_srgb"] == 5
    assert config["pseudo_labels"]["crf"]["iterations"] == 2
    assert config["evaluation"]["crf_params"]["iterations"] == 10
    assert config["dataset"]["voc"]["archives"]["voc2012_trainval"]["md5"] == "6cd6e144f989b92b3379bac3b3de84fd"


def test_default_config_is_valid():
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    assert config["dataset"]["kind"] == "toy"


SHIPPED_CONFIGS = [REPO / "config.yaml", *sorted((REPO / "workflow" / "configs").glob("*.yaml"))]


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_variant_builds_its_method(path):
    """The schema cannot check rules across keys (EIL's schedule): build each variant's method,
    defaults filled in, as its train_seg job will; a mistake would otherwise surface hours in."""
    from snakemake.utils import validate

    from stages.methods.registry import get_method

    config = yaml.safe_load(path.read_text())
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    for variant in config["variants"].values():
        get_method(variant["method"], {k: v for k, v in variant.items()
                                       if k not in ("method", "pseudo_labels", "scribbles", "seg")})


@pytest.mark.parametrize("bad", [{"kind": "imagenet"}, {"check": {"policy": "ignore"}}])
def test_dataset_enums(tmp_path, bad):
    msg = _dry_run_error(tmp_path, dataset=bad)
    assert "is not one of" in msg


def _schema() -> dict:
    return yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


# Variant keys that name a method's inputs (common.smk's train_seg_inputs turns them into files).
VARIANT_INPUTS = {"pseudo_labels", "scribbles"}


def test_schema_lists_each_method_with_its_options_and_needs():
    """A variant is checked at parse time against the schema: its method, its options (the class's
    fields) and, as required keys, the inputs its needs name must match the registry."""
    from stages.methods.registry import METHODS, method_options

    variant = _schema()["properties"]["variants"]["additionalProperties"]
    assert set(variant["properties"]["method"]["enum"]) == set(METHODS)
    blocks = {rule["if"]["properties"]["method"]["const"]: rule["then"] for rule in variant["allOf"]}
    assert blocks.keys() == METHODS.keys()
    for name, cls in METHODS.items():
        properties = set(blocks[name]["properties"])
        assert properties - VARIANT_INPUTS == {"method", "seg"} | method_options(cls), name
        named_by_variant = cls.needs & VARIANT_INPUTS
        assert set(blocks[name].get("required", [])) == named_by_variant, name
        assert named_by_variant <= properties, name


def test_decoder_enum_is_the_registry():
    from stages.models.decoders import DECODERS

    assert set(_schema()["$defs"]["decoder"]["enum"]) == set(DECODERS)


def test_weights_description_names_every_named_weights():
    from stages.models.weight_names import NAMED_WEIGHTS

    schema = _schema()
    words = set(schema["$defs"]["weights"]["description"].replace(",", " ").split())
    assert set(NAMED_WEIGHTS) <= words
    seg_override = schema["$defs"]["seg_override"]["properties"]["weights"]
    for block in (schema["properties"]["cam"], schema["properties"]["seg"]):
        assert block["properties"]["weights"] == {"$ref": "#/$defs/weights", "default": "none"}
    assert seg_override == {"$ref": "#/$defs/weights"}


def test_train_block_is_train_settings():
    """One definition of the training settings: the schema's block has TrainSettings' fields and
    defaults, and the stages' flags are made from the same dataclass."""
    import argparse
    import dataclasses

    from stages.runtime.settings import TrainSettings, add_training_arguments, settings_from, training_argv

    block = _schema()["$defs"]["train"]["properties"]
    fields = {f.name: f.default for f in dataclasses.fields(TrainSettings)}
    assert block.keys() == fields.keys()
    for name, default in fields.items():
        want = list(default) if isinstance(default, tuple) else default
        assert block[name]["default"] == want, name
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    flags = {a.dest for a in parser._actions} - {"help", "device", "precision", "channels_last"}
    assert flags == fields.keys()
    changed = TrainSettings(crop_size=64, scale_range=(0.5, 2.0), optimizer="adamw", effective_batch_size=32)
    assert settings_from(parser.parse_args(training_argv(changed))) == changed  # the flags' inverse


def test_variant_seg_override_reaches_only_its_job(tmp_path):
    """A variant's own decoder and train keys go to its train_seg job; the others keep `seg`."""
    cfg = write_config(tmp_path / "config.yaml", variants={
        "ce": {"method": "ce", "pseudo_labels": "none"},
        "mine": {"method": "ce", "pseudo_labels": "none", "seg": {"decoder": "mlp", "train": {"steps": 3}}}})
    out = snakemake(tmp_path, "-n", "-p", "--cores", "1", "results/seg/ce/model.pt", "results/seg/mine/model.pt",
                    config=cfg).stdout
    commands = {line.split("--out results/seg/")[1].split("/")[0]: line
                for line in out.splitlines() if "stages.train_seg" in line}
    assert "--decoder mlp" in commands["mine"] and "--steps 3" in commands["mine"]
    assert "--crop-size 64" in commands["mine"]  # the top-level train block, key by key
    assert "--decoder aspp" in commands["ce"] and "--steps 6" in commands["ce"]


def test_cold_start_from_another_variant_reads_its_model(tmp_path):
    cfg = write_config(tmp_path / "config.yaml", variants={
        "ce": {"method": "ce", "pseudo_labels": "none"},
        "warm": {"method": "ce", "pseudo_labels": "none", "seg": {"init": "variant:ce"}}})
    out = snakemake(tmp_path, "-n", "-p", "--cores", "1", "results/seg/warm/model.pt", config=cfg).stdout
    warm = next(line for line in out.splitlines() if "--out results/seg/warm/" in line)
    assert "--init-from-model results/seg/ce/model.pt" in warm and "--init-from-cam" not in warm


@pytest.mark.parametrize("init, message", [
    ("variant:nope", "variants.warm.seg.init: no variant 'nope'"),
    ("variant:warm", "cold starts form a cycle warm -> warm"),
    ("missing/model.pt", "variants.warm.seg.init: 'missing/model.pt' is neither"),
])
def test_bad_cold_start_is_named(tmp_path, init, message):
    msg = _dry_run_error(tmp_path, variants={"warm": {"method": "ce", "pseudo_labels": "none", "seg": {"init": init}}})
    assert message in msg


def test_method_without_its_inputs_is_refused(tmp_path):
    msg = _dry_run_error(tmp_path, variants={"ce": {"method": "ce"}})
    assert "variants.ce" in msg and "'pseudo_labels' is a required property" in msg
