# Helpers shared by the rule files -- validation, config lookups, input functions, wildcards.
import copy
import json
import math
import os

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from stages.models.weight_names import NAMED_WEIGHTS

min_version("9.0")

CONFIG_SCHEMA = os.path.join(
    workflow.basedir, "workflow", "schemas", "config.schema.yaml"
)


def config_errors(cfg, schema_path):
    """Every schema violation as 'key.path: what is wrong', so a typo is one readable line."""
    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    validator = jsonschema.Draft202012Validator(schema)
    found = [
        (list(map(str, err.absolute_path)), err.message)
        for err in validator.iter_errors(cfg)
    ]
    found += [
        (path, f"{value} is not a finite number")
        for path, value in non_finite_values(cfg)
    ]
    return [
        f"{'.'.join(path) or '<top level>'}: {message}"
        for path, message in sorted(found)
    ]


def non_finite_values(value, path=()):
    """(key path, value) of every .nan / .inf in the config: JSON Schema's bounds cannot refuse
    them (every comparison with NaN is false), and a NaN learning rate would surface only as a
    "non-finite loss" that names no key."""
    if isinstance(value, float) and not math.isfinite(value):
        yield list(path), value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from non_finite_values(item, (*path, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from non_finite_values(item, (*path, str(i)))


_errors = config_errors(config, CONFIG_SCHEMA)
if _errors:
    raise ValueError("invalid configuration:\n  " + "\n  ".join(_errors))
# A variant's `seg` block overrides only the keys it states: taken before `validate` fills the
# schema's defaults into it, which would otherwise override the top-level `seg` with defaults.
_VARIANT_SEG = {
    name: copy.deepcopy(v.get("seg", {}))
    for name, v in config.get("variants", {}).items()
}
validate(config, CONFIG_SCHEMA)  # fills in the schema's defaults

# Stage modules are run as `python -m stages.<name>` from any working directory.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# Passed on to jobs that run elsewhere (a cluster node), as they are set here.
envvars:
    "PYTHONPATH",
    "HF_HUB_OFFLINE",


INDEX_RAW = "results/dataset/index.json"
INDEX = "results/dataset/index.checked.json"
CAM_MODEL = "results/cam/model.pt"

REFINEMENTS = config["refinements"]
VARIANTS = config["variants"]
# pseudo_labels: gt reads the ground-truth masks (rule gt_labels): an ORACLE row, named so
GT_LABELS = "gt"


def oracle_uses(variant):
    """What in a variant reads ground truth to train (empty for an honest row)."""
    uses = []
    if variant.get("pseudo_labels") == GT_LABELS:
        uses.append("pseudo_labels: gt trains on the ground-truth masks")
    if variant.get("method") == "ugrl" and variant.get("pool") == "oracle":
        uses.append("pool: oracle ranks the pool by the ground-truth masks")
    return uses


def supervision(variant):
    """What a variant learns from, as the summary labels its row (ORACLE where it reads GT)."""
    if variant.get("scribbles"):
        return f"scribbles ({variant['scribbles']})"
    source = variant.get("pseudo_labels")
    if source == GT_LABELS:
        return "GT masks (ORACLE)"
    if source:
        return f"pseudo labels ({source})"
    return "image-level labels"


def cli(options, exclude=()):
    """A config mapping as command-line arguments: crop_size: 128 -> ["--crop-size", "128"].

    A list of single arguments, for a rule's shell line to quote one by one (`{params.x:q}`): no
    config value is ever read by the shell. Sorted by key: the arguments are rule params, and the
    same settings written in another order (or filled in by the schema in its order) must not look
    like a change and re-run the job.
    """
    args = []
    for key, value in sorted(options.items()):
        if key in exclude or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            args += [flag, *map(str, value)]
        elif isinstance(value, dict):
            args += [flag, json.dumps(value, sort_keys=True)]
        else:
            args += [flag, str(value)]
    return args


def dataset_args():
    """prepare_dataset's arguments for the configured kind (a list, see ``cli``)."""
    kind = config["dataset"]["kind"]
    root = (
        ["--root", f"results/dataset/{kind}"] if kind in ("toy", "voc", "coco") else []
    )
    return root + cli(config["dataset"][kind])


# Every stage runs as `python -m stages.<name>`, with torch's CPU threads set to the rule's
# `threads` so that concurrent jobs do not oversubscribe the cores.
PYTHON = "OMP_NUM_THREADS={threads} python -m"


def side_by_side(most):
    """`threads` of a rule whose jobs usually have others ready beside them (every rule after
    train_cam): half the cores of a local run, at least 1 and at most `most`. On 2 cores two
    one-thread jobs side by side get more done than one two-thread job (benchmarks/seg_step.py);
    a run without a core count (a cluster) gives `most`."""
    try:
        cores = workflow.cores
    except WorkflowError:
        return most
    return max(1, min(most, cores // 2))


# `priority` of the jobs every segmenter waits on (CAM inference and scoring, refinements, pseudo
# labels): with fewer cores than ready jobs, Snakemake starts them before segmenters, which are
# leaves of the DAG. Without it, the default run started PL-Mix, its longest chain, after three
# segmenters had taken the cores, and one core sat idle for 150 s while PL-Mix ran alone.
TRUNK_PRIORITY = 10
# Refinements head the longest chains (PL-Mix -> its pseudo labels -> their segmenters): among
# trunk jobs they go first, e.g. PL-Mix before the raw CAMs' pseudo labels (27 s earlier on the
# default run's critical path).
REFINEMENT_PRIORITY = 20
# Segmenters before the jobs that only score them or draw panels (which feed nothing but the
# summary): before, a 10 s evaluate that had taken a freed core delayed `ugrl`, the last job on the
# critical path, by as much.
SEGMENTER_PRIORITY = 1

# Training and inference stages start through this, so `resources.gpu` > 1 means torchrun.
LAUNCH = PYTHON + " stages.launch --gpus {resources.gpu}"
# Where and in what arithmetic every stage that runs a network computes.
DEVICE_ARGS = ["--device", config["device"], "--precision", config["precision"]] + (
    ["--channels-last"] if config["channels_last"] else []
)


def check_dataset_source():
    """A data set folder that is not there is refused before any job runs, naming the key."""
    kind = config["dataset"]["kind"]
    key, path = {
        "folder": ("path", config["dataset"]["folder"]["path"]),
        "voc": ("devkit", config["dataset"]["voc"]["devkit"]),
        "coco": ("path", config["dataset"]["coco"]["path"]),
    }.get(kind, (None, None))
    if path is not None and not os.path.isdir(path):
        raise ValueError(
            f"dataset.{kind}.{key}: {path!r} is not a directory (relative paths start at {os.getcwd()})"
        )


check_dataset_source()


def check_weights():
    """A weights file that is not there is refused before any job runs, naming the key: the CAM
    network's, the segmenter's, and each variant's own."""
    keys = {
        "cam.weights": config["cam"]["weights"],
        "seg.weights": config["seg"]["weights"],
    }
    keys |= {
        f"variants.{name}.seg.weights": seg["weights"]
        for name, seg in _VARIANT_SEG.items()
        if "weights" in seg
    }
    for key, value in keys.items():
        if value not in NAMED_WEIGHTS and not os.path.isfile(value):
            raise ValueError(
                f"{key}: {value!r} is neither one of {list(NAMED_WEIGHTS)} nor an existing weights "
                f"file (relative paths start at {os.getcwd()})"
            )


check_weights()


def variant_seg(name):
    """The segmenter settings of variant ``name``: the top-level `seg`, with the variant's own
    `seg` keys over it (its `train` block merged key by key)."""
    own = _VARIANT_SEG.get(name, {})
    merged = {**config["seg"], **own}
    merged["train"] = {**config["seg"]["train"], **own.get("train", {})}
    return merged


def budget_curves():
    """{variant: curve}: variants that differ only in `seg.train.steps` (and `checkpoint_every`)
    share a curve, named after its shortest variant name (then the first by name)."""
    groups = {}
    for name, options in sorted(VARIANTS.items()):
        seg = variant_seg(name)
        train = {
            k: v
            for k, v in seg["train"].items()
            if k not in ("steps", "checkpoint_every")
        }
        setting = {**options, "seg": {**seg, "train": train}}
        groups.setdefault(json.dumps(setting, sort_keys=True), []).append(name)
    return {
        name: min(names, key=lambda n: (len(n), n))
        for names in groups.values()
        for name in names
    }


def curve_labels():
    """{curve: refinement} for the budget curves that learn from pseudo labels (not masks or
    scribbles), by curve name."""
    return {
        curve: VARIANTS[curve]["pseudo_labels"]
        for curve in sorted(set(budget_curves().values()))
        if VARIANTS[curve].get("pseudo_labels") in REFINEMENTS
    }


def init_source(name):
    """('cam' | 'none' | 'variant' | 'file', the variant name or path) of a variant's `seg.init`."""
    init = variant_seg(name)["init"]
    if init in ("cam", "none"):
        return init, None
    if init.startswith("variant:"):
        return "variant", init.split(":", 1)[1]
    return "file", init


def scribble_dir(source):
    """The folder of a scribble source (`dataset`, `synthetic`, `pseudo:<refinement>`) for the
    training split: what rules/scribbles.smk writes."""
    split = config["cam"]["infer"]["split"]
    kind, _, refinement = source.partition(":")
    if kind == "pseudo":
        return f"results/scribbles/pseudo/{refinement}/{split}"
    return f"results/scribbles/{kind}/{split}"


def check_scribble_source(name, source):
    """A variant's `scribbles` must name something this config produces (the schema's pattern
    already refused any other form, naming the key)."""
    if source is None:
        return
    kind, _, refinement = source.partition(":")
    if kind == "pseudo" and refinement not in REFINEMENTS:
        raise ValueError(
            f"variants.{name}.scribbles: {source!r} names no refinement (refinements: {sorted(REFINEMENTS)})"
        )
    folder = config["dataset"]["folder"]["path"]
    if (
        kind == "dataset"
        and config["dataset"]["kind"] == "folder"
        and not os.path.isdir(os.path.join(folder, "Scribbles"))
    ):
        raise ValueError(
            f"variants.{name}.scribbles: dataset, but {folder!r} has no Scribbles/ folder; "
            f"use synthetic or pseudo:<refinement>"
        )


def check_variants():
    """Whatever a variant reads must exist: refused before any job, naming the variant and key."""
    for name, variant in VARIANTS.items():
        source = variant.get("pseudo_labels")
        if source is not None and source not in [*REFINEMENTS, GT_LABELS]:
            raise ValueError(
                f"variants.{name}.pseudo_labels: {source!r} is neither {GT_LABELS} nor one of "
                f"refinements {sorted(REFINEMENTS)}"
            )
        uses = oracle_uses(variant)
        if uses and "ORACLE" not in name:
            raise ValueError(
                f"variants.{name}: {uses[0]} (an ORACLE row); put ORACLE in the variant's name, "
                f"so that its outputs, summary row and plots say so"
            )
        check_scribble_source(name, variant.get("scribbles"))
        kind, value = init_source(name)
        if kind == "variant" and value not in VARIANTS:
            raise ValueError(
                f"variants.{name}.seg.init: no variant {value!r} (variants: {sorted(VARIANTS)})"
            )
        if kind == "file" and not os.path.isfile(value):
            raise ValueError(
                f"variants.{name}.seg.init: {value!r} is neither cam, none, variant:<name> nor an existing "
                f"file (relative paths start at {os.getcwd()})"
            )
        seen = [name]
        while kind == "variant":  # a chain of cold starts must end somewhere
            if value in seen:
                raise ValueError(
                    f"variants.{name}.seg.init: cold starts form a cycle {' -> '.join(seen + [value])}"
                )
            seen.append(value)
            kind, value = init_source(value)


check_variants()


def check_refinement_sources():
    """A refinement that refines another's CAM files (irn's `source`) must name a refinement of
    this config, and following sources must end at one that reads none (no cycle); refused before
    any job, naming the key."""
    for name in REFINEMENTS:
        seen, options = [name], REFINEMENTS[name]
        while "source" in options:
            source = options["source"]
            if source not in REFINEMENTS:
                raise ValueError(
                    f"refinements.{seen[-1]}.source: {source!r} names no refinement (refinements: "
                    f"{sorted(REFINEMENTS)})"
                )
            if source in seen:
                raise ValueError(
                    f"refinements.{name}.source: sources form a cycle {' -> '.join(seen + [source])}"
                )
            seen.append(source)
            options = REFINEMENTS[source]


check_refinement_sources()


wildcard_constraints:
    variant="|".join(VARIANTS),
    refinement="|".join(REFINEMENTS),
    split=r"[A-Za-z0-9_]+",
    cam_run=r"cam|refine/[A-Za-z0-9_]+",


# Refinement methods that write CAM files themselves; every other method but `none` writes a CAM
# network (results/refine/<name>/model.pt) that infer_cam runs (PL-Mix also writes the CAM file of
# the inference split, its last round's pass; infer_cam makes its other splits).
CAM_FILE_METHODS = ("imported", "irn")


def refinements_of(*methods):
    """Names of the refinements whose method is one of ``methods``, sorted."""
    return sorted(
        r for r, options in REFINEMENTS.items() if options["method"] in methods
    )


def check_imported_folders():
    """An imported refinement's folder that is not there is refused before any job, naming the key."""
    for name in refinements_of("imported"):
        path = REFINEMENTS[name]["path"]
        if not os.path.isdir(path):
            raise ValueError(
                f"refinements.{name}.path: {path!r} is not a directory (relative paths start at"
                f" {os.getcwd()}; to run the dataset rules first and learn the ids, create it empty)"
            )


check_imported_folders()


def name_pattern(names):
    """A wildcard constraint that matches exactly these names (and nothing when there are none)."""
    return "|".join(names) if names else "(?!)"


def cam_run(refinement):
    """The folder of a refinement's CAM network and CAM files: `none` is the raw CAM run."""
    return (
        "cam" if REFINEMENTS[refinement]["method"] == "none" else f"refine/{refinement}"
    )


def source_file(wildcards, name):
    """A file of the CAM run an IRN refinement walks (its `source` refinement's): CAMs, sweep."""
    return f"results/{cam_run(REFINEMENTS[wildcards.refinement]['source'])}/{name}"


def refined_cams(wildcards):
    """CAMs that pseudo labels of a refinement read: `none` reads the raw CAMs."""
    return f"results/{cam_run(wildcards.refinement)}/cams_{wildcards.split}.h5"


def refined_best(wildcards):
    """The best threshold of that same CAM file's own sweep."""
    return f"results/{cam_run(wildcards.refinement)}/eval/best.json"


# Keys of a variant that name its inputs or settings rather than the method's options.
VARIANT_KEYS = ("method", "pseudo_labels", "scribbles", "seg")


def train_seg_inputs(wildcards):
    """A variant's inputs, from what it names: pseudo labels of a refinement, scribbles, the model it
    starts from."""
    name = wildcards.variant
    inputs = {"index": INDEX, "cam_model": CAM_MODEL}
    refinement = VARIANTS[name].get("pseudo_labels")
    split = config["cam"]["infer"]["split"]
    if refinement == GT_LABELS:
        inputs["pseudo_labels"] = f"results/gt_labels/{split}"
    elif refinement is not None:
        inputs["pseudo_labels"] = f"results/pseudo_labels/{refinement}/{split}"
    scribbles = VARIANTS[name].get("scribbles")
    if scribbles is not None:
        inputs["scribbles"] = scribble_dir(scribbles)
    kind, value = init_source(name)
    if kind == "variant":
        inputs["init_model"] = f"results/seg/{value}/model.pt"
    elif kind == "file":
        inputs["init_model"] = value
    return inputs


def train_seg_flags(wildcards, input):
    """The input arguments of train_seg for what ``train_seg_inputs`` gave the variant."""
    args = ["--cam-checkpoint", input.cam_model]
    if "pseudo_labels" in input.keys():
        args += ["--pseudo-labels", input.pseudo_labels]
    if "scribbles" in input.keys():
        args += ["--scribbles", input.scribbles]
    kind, _ = init_source(wildcards.variant)
    if kind == "cam":
        args += ["--init-from-cam", input.cam_model]
    elif kind in ("variant", "file"):
        args += ["--init-from-model", input.init_model]
    return args


def variant_options(wildcards):
    """A variant's method options as one JSON argument."""
    options = {
        k: v for k, v in VARIANTS[wildcards.variant].items() if k not in VARIANT_KEYS
    }
    return json.dumps(options, sort_keys=True)


def panel_refinement():
    """The refinement whose pseudo labels the CAM panels show: `none` (the raw CAMs' labels) when
    configured, else the first by name (not by config order, which is no setting)."""
    return "none" if "none" in REFINEMENTS else sorted(REFINEMENTS)[0]


def panel_ids(index_path):
    """The first few ids of the CAM evaluation split: the images shown in the report."""
    with open(index_path) as f:
        ids = json.load(f)["splits"][config["cam"]["eval"]["split"]]
    return ids[: max(1, config["evaluation"]["panels"])]
