# Helpers shared by the rule files: validation, config lookups, input functions, wildcards.
import json
import os
import shlex

import jsonschema
import yaml
from snakemake.utils import min_version, validate

from stages.methods.needs import METHOD_NEEDS

min_version("9.0")

CONFIG_SCHEMA = os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")


def config_errors(cfg, schema_path):
    """Every schema violation as 'key.path: what is wrong', so a typo is one readable line."""
    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<top level>'}: {err.message}"
        for err in sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    ]


_errors = config_errors(config, CONFIG_SCHEMA)
if _errors:
    raise ValueError("invalid configuration:\n  " + "\n  ".join(_errors))
validate(config, CONFIG_SCHEMA)  # fills in the schema's defaults

# Stage modules are run as `python -m stages.<name>` from any working directory.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

INDEX_RAW = "results/dataset/index.json"
INDEX = "results/dataset/index.checked.json"
CAM_MODEL = "results/cam/model.pt"

REFINEMENTS = config["refinements"]
VARIANTS = config["variants"]


def cli(options, exclude=()):
    """Turn a config mapping into command-line flags: crop_size: 128 -> --crop-size 128.

    Sorted by key: the flags are rule params, and the same settings written in another order
    (or filled in by the schema in its order) must not look like a change and re-run the job.
    """
    parts = []
    for key, value in sorted(options.items()):
        if key in exclude or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            parts.append(flag + " " + " ".join(shlex.quote(str(v)) for v in value))
        elif isinstance(value, dict):
            parts.append(flag + " " + shlex.quote(json.dumps(value, sort_keys=True)))
        else:
            parts.append(flag + " " + shlex.quote(str(value)))
    return " ".join(parts)


def dataset_args():
    kind = config["dataset"]["kind"]
    options = config["dataset"][kind]
    if kind == "toy":
        return "--root results/dataset/toy " + cli(options)
    if kind == "voc":
        return "--root results/dataset/voc " + cli(options)
    return cli(options)


# Every stage runs as `python -m stages.<name>`, with torch's CPU threads set to the rule's
# `threads` so that concurrent jobs do not oversubscribe the cores.
PYTHON = "OMP_NUM_THREADS={threads} python -m"
# Training and inference stages start through this, so `resources.gpu` > 1 means torchrun.
LAUNCH = PYTHON + " stages.launch --gpus {resources.gpu}"


def check_dataset_source():
    """A data set folder that is not there is refused before any job runs, naming the key."""
    kind = config["dataset"]["kind"]
    key, path = {"folder": ("path", config["dataset"]["folder"]["path"]),
                 "voc": ("devkit", config["dataset"]["voc"]["devkit"])}.get(kind, (None, None))
    if path is not None and not os.path.isdir(path):
        raise ValueError(
            f"dataset.{kind}.{key}: {path!r} is not a directory (relative paths start at {os.getcwd()})"
        )


check_dataset_source()


def check_variants():
    for name, variant in VARIANTS.items():
        method = variant["method"]
        if method not in METHOD_NEEDS:
            raise ValueError(
                f"variants.{name}: unknown method {method!r} (known: {sorted(METHOD_NEEDS)})"
            )
        if "pseudo_labels" in METHOD_NEEDS[method]:
            source = variant.get("pseudo_labels")
            if source not in REFINEMENTS:
                raise ValueError(
                    f"variants.{name}: method {method!r} needs pseudo_labels naming one of "
                    f"refinements {sorted(REFINEMENTS)}, got {source!r}"
                )


check_variants()


wildcard_constraints:
    variant="|".join(VARIANTS),
    refinement="|".join(REFINEMENTS),
    split=r"[A-Za-z0-9_]+",
    cam_run=r"cam|refine/[A-Za-z0-9_]+",


def refined_cams(wildcards):
    """CAMs that pseudo labels of a refinement read: `none` reads the raw CAMs."""
    if REFINEMENTS[wildcards.refinement]["method"] == "none":
        return f"results/cam/cams_{wildcards.split}.h5"
    return f"results/refine/{wildcards.refinement}/cams_{wildcards.split}.h5"


def variant_pseudo_labels(wildcards):
    refinement = VARIANTS[wildcards.variant]["pseudo_labels"]
    return f"results/pseudo_labels/{refinement}/{config['cam']['infer']['split']}"


def variant_options(wildcards):
    options = {k: v for k, v in VARIANTS[wildcards.variant].items() if k not in ("method", "pseudo_labels")}
    return shlex.quote(json.dumps(options, sort_keys=True))


def used_refinements():
    return sorted({v["pseudo_labels"] for v in VARIANTS.values() if "pseudo_labels" in v})


def panel_ids(index_path):
    """The first few ids of the CAM evaluation split: the images shown in the report."""
    with open(index_path) as f:
        ids = json.load(f)["splits"][config["cam"]["eval"]["split"]]
    return ids[: max(1, config["evaluation"]["panels"])]
