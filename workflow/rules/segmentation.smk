rule train_seg:
    input:
        unpack(train_seg_inputs),
    output:
        model="results/seg/{variant}/model.pt",
        metrics="results/seg/{variant}/train_metrics.csv",
        # what the method shows the user (e.g. label maps per round); may stay empty
        outputs=report(
            directory("results/seg/{variant}/outputs"),
            patterns=["{name}.png"],
            caption="../report/method_outputs.rst",
            category="Methods",
            subcategory="{variant}",
        ),
    log:
        "results/logs/train_seg/{variant}.log",
    benchmark:
        "results/benchmarks/train_seg-{variant}.tsv"
    priority: SEGMENTER_PRIORITY
    threads: side_by_side(4)
    resources:
        gpu=lambda wildcards: variant_seg(wildcards.variant).get("processes", 1),
        mem_mb=16000,
        runtime=480,
    params:
        # Not outputs: they survive a killed job, and the re-run resumes from them.
        checkpoint="results/seg/{variant}/checkpoint.pt",
        state_dir="results/seg/{variant}/state",
        method=lambda wildcards: VARIANTS[wildcards.variant]["method"],
        options=variant_options,
        inputs=train_seg_flags,
        split=config["cam"]["infer"]["split"],
        model=lambda wildcards: cli(
            variant_seg(wildcards.variant), exclude=("train", "init", "processes")
        ),
        train=lambda wildcards: cli(variant_seg(wildcards.variant)["train"]),
        device=DEVICE_ARGS,
    shell:
        LAUNCH + " stages.train_seg --index {input.index:q} --split {params.split:q}"
        " --method {params.method:q} --method-options {params.options:q} {params.inputs:q}"
        " {params.model:q} {params.train:q} {params.device:q} --out {output.model:q}"
        " --checkpoint {params.checkpoint:q} --state-dir {params.state_dir:q} --outputs {output.outputs:q}"
        " --metrics {output.metrics:q} > {log:q} 2>&1"


rule evaluate:
    input:
        index=INDEX,
        model="results/seg/{variant}/model.pt",
    output:
        metrics="results/eval/{variant}/metrics.csv",
        per_class="results/eval/{variant}/per_class.csv",
        predictions=directory("results/eval/{variant}/predictions"),
        panels=report(
            directory("results/eval/{variant}/panels"),
            patterns=["{id}.png"],
            caption="../report/eval_panels.rst",
            category="Segmentation",
            subcategory="{variant}",
        ),
    log:
        "results/logs/evaluate/{variant}.log",
    benchmark:
        "results/benchmarks/evaluate-{variant}.tsv"
    threads: side_by_side(2)
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        split=config["evaluation"]["split"],
        options=cli(config["evaluation"], exclude=("split", "crf_params", "fit")),
        crf=cli(config["evaluation"]["crf_params"]),
        device=DEVICE_ARGS,
    shell:
        PYTHON
        + " stages.evaluate --index {input.index:q} --checkpoint {input.model:q} --split {params.split:q}"
        " {params.options:q} {params.crf:q} {params.device:q} --out-metrics {output.metrics:q}"
        " --out-per-class {output.per_class:q} --out-predictions {output.predictions:q}"
        " --out-panels {output.panels:q} > {log:q} 2>&1"


# The same segmenter scored on the images it was fitted on (evaluation.fit), against their masks:
# beside the labels' own train mIoU, it tells underfitting from noisy labels (the budget curve).
use rule evaluate as evaluate_fit with:
    output:
        metrics="results/eval/{variant}/fit/metrics.csv",
        per_class="results/eval/{variant}/fit/per_class.csv",
        predictions=directory("results/eval/{variant}/fit/predictions"),
        panels=directory("results/eval/{variant}/fit/panels"),
    log:
        "results/logs/evaluate_fit/{variant}.log",
    benchmark:
        "results/benchmarks/evaluate_fit-{variant}.tsv"
    params:
        split=config["cam"]["eval"]["split"],
        options=cli(config["evaluation"], exclude=("split", "crf_params", "fit")),
        crf=cli(config["evaluation"]["crf_params"]),
        device=DEVICE_ARGS,
