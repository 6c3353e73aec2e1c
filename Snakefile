# Label-efficient semantic segmentation: weak labels -> CAMs -> pseudo labels -> segmenters.
# A table of contents: configuration, validation, one rule file per stage family, the default target.
import os


# The repository default, also when run with --directory; --configfile files merge over it.
configfile: os.path.join(workflow.basedir, "config.yaml")


# Used by `snakemake --sdm conda`; the default is the virtual environment from `make setup`.
conda: "envs/pipeline.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/cam.smk"
include: "workflow/rules/refine.smk"
include: "workflow/rules/pseudo_labels.smk"
include: "workflow/rules/segmentation.smk"
include: "workflow/rules/summary.smk"


rule all:
    input:
        "results/summary/summary.md",
        "results/cam/panels",
        "results/devices.json",
