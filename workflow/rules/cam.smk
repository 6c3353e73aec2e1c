rule train_cam:
    input:
        index=INDEX,
    output:
        model=CAM_MODEL,
        metrics="results/cam/train_metrics.csv",
    log:
        "results/logs/train_cam.log",
    benchmark:
        "results/benchmarks/train_cam.tsv"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        # Not an output, so that it survives a killed or failed job and the re-run resumes.
        checkpoint="results/cam/checkpoint.pt",
        backbone=config["cam"]["backbone"],
        weights=config["cam"]["weights"],
        pooling=config["cam"]["pooling"],
        train=cli(config["cam"]["train"]),
        device=DEVICE_ARGS,
    shell:
        LAUNCH + " stages.train_cam --index {input.index:q} --split train_aug"
        " --backbone {params.backbone:q} --weights {params.weights:q} --pooling {params.pooling:q}"
        " {params.train:q} {params.device:q} --out {output.model:q}"
        " --checkpoint {params.checkpoint:q} --metrics {output.metrics:q} > {log:q} 2>&1"


rule infer_cam:
    input:
        index=INDEX,
        model="results/{cam_run}/model.pt",
    output:
        "results/{cam_run}/cams_{split}.h5",
    log:
        "results/logs/infer_cam/{cam_run}/{split}.log",
    benchmark:
        "results/benchmarks/infer_cam-{cam_run}-{split}.tsv"
    # The raw CAM network (cam_run "cam") and refined ones ("refine/<name>") alike; refinements
    # that write their CAM files themselves have rules of their own (PL-Mix writes that of the
    # inference split with its network: `ruleorder` in refine.smk).
    wildcard_constraints:
        cam_run="cam|refine/("
        + name_pattern(
            [
                r
                for r in REFINEMENTS
                if r not in refinements_of("none", *CAM_FILE_METHODS)
            ]
        )
        + ")",
    priority: TRUNK_PRIORITY
    threads: side_by_side(2)
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        scales=cli(
            {
                "scales": config["cam"]["infer"]["scales"],
                "flip": config["cam"]["infer"]["flip"],
            }
        ),
        device=DEVICE_ARGS,
    shell:
        LAUNCH
        + " stages.infer_cam --index {input.index:q} --checkpoint {input.model:q}"
        " --split {wildcards.split:q} {params.scales:q} {params.device:q} --out {output:q} > {log:q} 2>&1"


rule eval_cam:
    # Every CAM file pseudo labels are made from gets its own sweep: the raw CAMs ("cam") and each
    # refinement's ("refine/<name>"); each pseudo-label job cuts at its own file's best threshold.
    input:
        index=INDEX,
        cams=f"results/{{cam_run}}/cams_{config['cam']['infer']['split']}.h5",
    output:
        sweep="results/{cam_run}/eval/sweep.csv",
        per_class="results/{cam_run}/eval/per_class.csv",
        best="results/{cam_run}/eval/best.json",
    log:
        "results/logs/eval_cam/{cam_run}.log",
    priority: TRUNK_PRIORITY
    params:
        split=config["cam"]["eval"]["split"],
        sweep=cli(config["cam"]["eval"], exclude=("split",)),
    shell:
        PYTHON
        + " stages.eval_cam --index {input.index:q} --cams {input.cams:q} --split {params.split:q}"
        " {params.sweep:q} --out-sweep {output.sweep:q} --out-per-class {output.per_class:q}"
        " --out-best {output.best:q} > {log:q} 2>&1"


rule cam_panels:
    input:
        index=INDEX,
        cams=f"results/cam/cams_{config['cam']['infer']['split']}.h5",
        labels=f"results/pseudo_labels/{panel_refinement()}/{config['cam']['infer']['split']}",
    output:
        report(
            directory("results/cam/panels"),
            patterns=["{id}.png"],
            caption="../report/cam_panels.rst",
            category="CAMs and pseudo labels",
        ),
    log:
        "results/logs/cam_panels.log",
    params:
        ids=lambda wildcards, input: panel_ids(input.index),
    shell:
        PYTHON
        + " stages.inspect --index {input.index:q} --cams {input.cams:q} --labels {input.labels:q}"
        " --ids {params.ids:q} --out-dir {output:q} > {log:q} 2>&1"
