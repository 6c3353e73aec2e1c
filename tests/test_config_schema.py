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
    msg = _dry_run_error(tmp_path, variants={"ce2": {"method": "ce", "pseudo_labels": "plmix"}})
    assert "variants.ce2" in msg and "plmix" in msg


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


@pytest.mark.parametrize("bad", [{"kind": "imagenet"}, {"check": {"policy": "ignore"}}])
def test_dataset_enums(tmp_path, bad):
    msg = _dry_run_error(tmp_path, dataset=bad)
    assert "is not one of" in msg


def test_workflow_needs_table_matches_the_registry():
    """The torch-free table the workflow validates variants with is the methods' own."""
    from stages.methods.needs import METHOD_NEEDS
    from stages.methods.registry import METHODS

    assert {name: cls.needs for name, cls in METHODS.items()} == METHOD_NEEDS


def test_schema_lists_each_method_with_its_options():
    """A variant's options are checked at parse time against the schema; it must match the classes."""
    import dataclasses

    from stages.methods.registry import METHODS

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    per_method = {rule["if"]["properties"]["method"]["const"]: set(rule["then"]["properties"])
                  for rule in schema["properties"]["variants"]["additionalProperties"]["allOf"]}
    assert per_method == {name: {"method", "pseudo_labels"} | {f.name for f in dataclasses.fields(cls)}
                          for name, cls in METHODS.items()}
