rule summary:
    input:
        # the sweep of every CAM file that pseudo labels are made from
        cam_best=expand(
            "results/{run}/eval/best.json",
            run=sorted({cam_run(r) for r in REFINEMENTS} | {"cam"}),
        ),
        cam_metrics="results/cam/train_metrics.csv",
        # every configured refinement, used by a variant or not: before/after refinement side by side
        pseudo=expand(
            "results/pseudo_labels/{refinement}/eval/summary.csv",
            refinement=REFINEMENTS,
        ),
        pseudo_per_class=expand(
            "results/pseudo_labels/{refinement}/eval/per_class.csv",
            refinement=REFINEMENTS,
        ),
        variants=expand("results/eval/{variant}/metrics.csv", variant=VARIANTS),
        variant_per_class=expand(
            "results/eval/{variant}/per_class.csv", variant=VARIANTS
        ),
        # what each method reports on itself (UGRL pool precision, EIL rounds); may be empty
        method_outputs=expand("results/seg/{variant}/outputs", variant=VARIANTS),
        seg_metrics=expand("results/seg/{variant}/train_metrics.csv", variant=VARIANTS),
        rounds=expand(
            "results/refine/{refinement}/rounds.csv",
            refinement=refinements_of("plmix"),
        ),
    output:
        csv="results/summary/summary.csv",
        per_class="results/summary/per_class.csv",
        md=report(
            "results/summary/summary.md",
            caption="../report/summary.rst",
            category="Summary",
        ),
        variants=report(
            "results/summary/variants.png",
            caption="../report/variants.rst",
            category="Summary",
        ),
        curves=report(
            "results/summary/curves.png",
            caption="../report/curves.rst",
            category="Summary",
        ),
    log:
        "results/logs/summary.log",
    params:
        pseudo=lambda wildcards, input: [
            f"{r}={path}" for r, path in zip(REFINEMENTS, input.pseudo)
        ],
        variants=lambda wildcards, input: [
            f"{v}={path}" for v, path in zip(VARIANTS, input.variants)
        ],
        pseudo_per_class=lambda wildcards, input: [
            f"{r}={path}" for r, path in zip(REFINEMENTS, input.pseudo_per_class)
        ],
        variant_per_class=lambda wildcards, input: [
            f"{v}={path}" for v, path in zip(VARIANTS, input.variant_per_class)
        ],
        # variants trained on scribbles or ground truth have no pseudo labels, and are not listed;
        # sorted, as the config's order is no setting and must not re-run the summary
        variant_labels=[
            f"{v}={options['pseudo_labels']}"
            for v, options in sorted(VARIANTS.items())
            if options.get("pseudo_labels") not in (None, GT_LABELS)
        ],
        # sorted: the config's order is no setting
        variant_supervision=[
            f"{v}={supervision(options)}" for v, options in sorted(VARIANTS.items())
        ],
        method_outputs=lambda wildcards, input: [
            f"{v}={path}" for v, path in zip(VARIANTS, input.method_outputs)
        ],
        curves=lambda wildcards, input: [f"cam={input.cam_metrics}"]
        + [f"{v}={path}" for v, path in zip(VARIANTS, input.seg_metrics)],
        # the refinement is the folder name: results/refine/<refinement>/rounds.csv
        rounds=lambda wildcards, input: [
            f"{os.path.basename(os.path.dirname(path))}={path}"
            for path in input.rounds
        ],
        # results/cam/eval/best.json -> cam, results/refine/plmix/eval/best.json -> plmix
        cam_best=lambda wildcards, input: [
            f"{path.split('/')[-3]}={path}" for path in input.cam_best
        ],
        cam_split=config["cam"]["eval"]["split"],
        seg_split=config["evaluation"]["split"],
    shell:
        PYTHON
        + " stages.summary --cam-best {params.cam_best:q} --pseudo {params.pseudo:q}"
        " --variant {params.variants:q} --train-metrics {params.curves:q} --refine-rounds {params.rounds:q}"
        " --pseudo-per-class {params.pseudo_per_class:q} --variant-per-class {params.variant_per_class:q}"
        " --variant-labels {params.variant_labels:q} --method-outputs {params.method_outputs:q}"
        " --variant-supervision {params.variant_supervision:q}"
        " --cam-split {params.cam_split:q} --seg-split {params.seg_split:q} --benchmarks results/benchmarks"
        " --out-csv {output.csv:q} --out-per-class {output.per_class:q} --out-md {output.md:q}"
        " --out-plot-variants {output.variants:q} --out-plot-curves {output.curves:q} > {log:q} 2>&1"


# evaluation.fit: val and train mIoU against steps, beside the labels' own train mIoU
rule budget_curve:
    input:
        val=expand("results/eval/{variant}/metrics.csv", variant=VARIANTS),
        fit=expand("results/eval/{variant}/fit/metrics.csv", variant=VARIANTS),
        labels=[
            f"results/pseudo_labels/{r}/eval/summary.csv"
            for r in curve_labels().values()
        ],
    output:
        csv="results/summary/budget_curve.csv",
        png=report(
            "results/summary/budget_curve.png",
            caption="../report/budget_curve.rst",
            category="Summary",
        ),
    log:
        "results/logs/budget_curve.log",
    params:
        points=[
            f"{v}={curve}:{variant_seg(v)['train']['steps']}"
            for v, curve in budget_curves().items()
        ],
        val=lambda wildcards, input: [
            f"{v}={path}" for v, path in zip(VARIANTS, input.val)
        ],
        fit=lambda wildcards, input: [
            f"{v}={path}" for v, path in zip(VARIANTS, input.fit)
        ],
        labels=lambda wildcards, input: [
            f"{curve}={path}" for curve, path in zip(curve_labels(), input.labels)
        ],
    shell:
        PYTHON
        + " stages.budget_curve --point {params.points:q} --val {params.val:q} --fit {params.fit:q}"
        " --labels {params.labels:q} --out-csv {output.csv:q} --out-png {output.png:q} > {log:q} 2>&1"


rule devices:
    output:
        "results/devices.json",
    log:
        "results/logs/devices.log",
    resources:
        gpu=1,
        runtime=5,
    shell:
        LAUNCH + " stages.devices --out {output:q} > {log:q} 2>&1"
