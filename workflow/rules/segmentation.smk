rule train_seg:
    input:
        index=INDEX,
        pseudo_labels=variant_pseudo_labels,
        cam_model=CAM_MODEL,
    output:
        model="results/seg/{variant}/model.pt",
        metrics="results/seg/{variant}/train_metrics.csv",
    params:
        checkpoint="results/seg/{variant}/checkpoint.pt",
        method=lambda wildcards: VARIANTS[wildcards.variant]["method"],
        options=variant_options,
        init=lambda wildcards, input: f"--init-from-cam {input.cam_model}" if config["seg"]["init_from_cam"] else "",
        split=config["cam"]["infer"]["split"],
        model=cli(config["seg"], exclude=("train", "init_from_cam")),
        train=cli(config["seg"]["train"]),
        device=config["device"],
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=480,
    log:
        "results/logs/train_seg/{variant}.log",
    benchmark:
        "results/benchmarks/train_seg-{variant}.tsv"
    shell:
        LAUNCH + " stages.train_seg --index {input.index} --split {params.split}"
        " --method {params.method} --method-options {params.options}"
        " --pseudo-labels {input.pseudo_labels} {params.init} {params.model} {params.train}"
        " --device {params.device} --out {output.model} --checkpoint {params.checkpoint}"
        " --metrics {output.metrics} > {log} 2>&1"


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
    params:
        split=config["evaluation"]["split"],
        options=cli(config["evaluation"], exclude=("split", "crf_params")),
        crf=cli(config["evaluation"]["crf_params"]),
        device=config["device"],
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    log:
        "results/logs/evaluate/{variant}.log",
    benchmark:
        "results/benchmarks/evaluate-{variant}.tsv"
    shell:
        PYTHON + " stages.evaluate --index {input.index} --checkpoint {input.model} --split {params.split}"
        " {params.options} {params.crf} --device {params.device} --out-metrics {output.metrics}"
        " --out-per-class {output.per_class} --out-predictions {output.predictions}"
        " --out-panels {output.panels} > {log} 2>&1"
