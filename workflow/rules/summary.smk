rule summary:
    input:
        cam_best="results/cam/eval/best.json",
        cam_metrics="results/cam/train_metrics.csv",
        # every configured refinement, used by a variant or not: before/after refinement side by side
        pseudo=expand("results/pseudo_labels/{refinement}/eval/summary.csv", refinement=REFINEMENTS),
        variants=expand("results/eval/{variant}/metrics.csv", variant=VARIANTS),
        seg_metrics=expand("results/seg/{variant}/train_metrics.csv", variant=VARIANTS),
        rounds=expand(
            "results/refine/{refinement}/rounds.csv",
            refinement=[r for r, options in REFINEMENTS.items() if options["method"] == "plmix"],
        ),
    output:
        csv="results/summary/summary.csv",
        md=report("results/summary/summary.md", caption="../report/summary.rst", category="Summary"),
        variants=report("results/summary/variants.png", caption="../report/variants.rst", category="Summary"),
        curves=report("results/summary/curves.png", caption="../report/curves.rst", category="Summary"),
    params:
        pseudo=lambda wildcards, input: " ".join(
            f"{r}={path}" for r, path in zip(REFINEMENTS, input.pseudo)
        ),
        variants=lambda wildcards, input: " ".join(f"{v}={path}" for v, path in zip(VARIANTS, input.variants)),
        curves=lambda wildcards, input: " ".join(
            [f"cam={input.cam_metrics}"] + [f"{v}={path}" for v, path in zip(VARIANTS, input.seg_metrics)]
        ),
        # the refinement is the folder name: results/refine/<refinement>/rounds.csv
        rounds=lambda wildcards, input: " ".join(
            f"{os.path.basename(os.path.dirname(path))}={path}" for path in input.rounds
        ),
        cam_split=config["cam"]["eval"]["split"],
        seg_split=config["evaluation"]["split"],
    log:
        "results/logs/summary.log",
    shell:
        PYTHON + " stages.summary --cam-sweep-best {input.cam_best} --pseudo {params.pseudo}"
        " --variant {params.variants} --train-metrics {params.curves} --refine-rounds {params.rounds}"
        " --cam-split {params.cam_split} --seg-split {params.seg_split} --benchmarks results/benchmarks"
        " --out-csv {output.csv} --out-md {output.md} --out-plot-variants {output.variants}"
        " --out-plot-curves {output.curves} > {log} 2>&1"


rule devices:
    output:
        "results/devices.json",
    resources:
        gpu=1,
        runtime=5,
    log:
        "results/logs/devices.log",
    shell:
        LAUNCH + " stages.devices --out {output} > {log} 2>&1"
