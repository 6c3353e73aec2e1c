# Label-efficient semantic segmentation: weak labels -> CAMs -> pseudo labels -> segmenters.
# A table of contents: configuration, validation, one rule file per stage family, the default target.
import os

# The repository default, also when run with --directory. A --configfile is a whole experiment and
# replaces it (keys it leaves out take the schema's defaults), so a variant left out of the file is
# gone rather than merged back in from here; --config key=value still edits either one.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config.yaml")


# Used by `snakemake --sdm conda`; the default is the virtual environment from `make setup`.
conda: "envs/pipeline.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/cam.smk"
include: "workflow/rules/refine.smk"
include: "workflow/rules/import_cams.smk"
include: "workflow/rules/pseudo_labels.smk"
include: "workflow/rules/scribbles.smk"
include: "workflow/rules/segmentation.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/browse.smk"


rule all:
    input:
        "results/summary/summary.md",
        "results/browse",
        "results/cam/panels",
        "results/devices.json",
        # evaluation.fit: every segmenter scored on the images it was fitted on, and the budget curve
        "results/summary/budget_curve.png" if config["evaluation"]["fit"] else [],
