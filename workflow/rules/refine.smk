# PL-Mix writes its network's CAM file of the inference split itself; infer_cam makes the others.
ruleorder: refine_plmix > infer_cam


def plmix_crf(wildcards):
    """pseudo_labels.crf, at the refinement's crf_scale where it sets one."""
    crf = config["pseudo_labels"]["crf"]
    scale = REFINEMENTS[wildcards.refinement].get("crf_scale", crf["scale"])
    return cli({**crf, "scale": scale})


rule refine_plmix:
    input:
        index=INDEX,
        model=CAM_MODEL,
        best="results/cam/eval/best.json",
        # the input network's CAMs: round 1's pseudo labels without a second pass over the split
        cams=f"results/cam/cams_{config['cam']['infer']['split']}.h5",
    output:
        model="results/refine/{refinement}/model.pt",
        # the last round's pass: infer_cam would compute the same file again
        cams=f"results/refine/{{refinement}}/cams_{config['cam']['infer']['split']}.h5",
        rounds="results/refine/{refinement}/rounds.csv",
    log:
        "results/logs/refine/{refinement}.log",
    benchmark:
        "results/benchmarks/refine-{refinement}.tsv"
    wildcard_constraints:
        refinement=name_pattern(refinements_of("plmix")),
    priority: REFINEMENT_PRIORITY
    threads: side_by_side(4)
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=480,
    params:
        # Not an output: round state survives a killed job, and the re-run resumes.
        state_dir="results/refine/{refinement}/state",
        options=lambda wildcards: cli(
            REFINEMENTS[wildcards.refinement], exclude=("method", "train", "crf_scale")
        ),
        train=lambda wildcards: cli(REFINEMENTS[wildcards.refinement]["train"]),
        split=config["cam"]["infer"]["split"],
        eval_split=config["cam"]["eval"]["split"],
        inference=cli(
            {
                "scales": config["cam"]["infer"]["scales"],
                "flip": config["cam"]["infer"]["flip"],
            }
        ),
        sweep=cli(config["cam"]["eval"], exclude=("split",)),
        crf=plmix_crf,
        device=DEVICE_ARGS,
    shell:
        LAUNCH
        + " stages.refine --index {input.index:q} --split {params.split:q} --eval-split {params.eval_split:q}"
        " --checkpoint {input.model:q} --best {input.best:q} --cams {input.cams:q} {params.options:q} {params.train:q}"
        " {params.inference:q}"
        " {params.sweep:q} {params.crf:q} --crf-workers {threads} {params.device:q}"
        " --out {output.model:q} --out-cams {output.cams:q} --rounds-csv {output.rounds:q}"
        " --state-dir {params.state_dir:q} > {log:q} 2>&1"


# IRN refinement, part 1 (stages.refine_irn train): the affinity network, from the source's CAMs.
rule train_irn:
    input:
        index=INDEX,
        cam_model=CAM_MODEL,
        cams=lambda wildcards: source_file(
            wildcards, f"cams_{config['cam']['infer']['split']}.h5"
        ),
        best=lambda wildcards: source_file(wildcards, "eval/best.json"),
    output:
        model="results/refine/{refinement}/affinity.pt",
        metrics="results/refine/{refinement}/train_metrics.csv",
    log:
        "results/logs/train_irn/{refinement}.log",
    benchmark:
        "results/benchmarks/train_irn-{refinement}.tsv"
    wildcard_constraints:
        refinement=name_pattern(refinements_of("irn")),
    priority: REFINEMENT_PRIORITY
    threads: side_by_side(4)
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        # Not an output: the confident labels and the training checkpoint survive a killed job.
        state_dir="results/refine/{refinement}/state",
        options=lambda wildcards: cli(
            REFINEMENTS[wildcards.refinement],
            exclude=("method", "source", "train", "beta", "log_t", "alpha"),
        ),
        train=lambda wildcards: cli(REFINEMENTS[wildcards.refinement]["train"]),
        split=config["cam"]["infer"]["split"],
        weights=config["cam"]["weights"],
        crf=cli(config["pseudo_labels"]["crf"]),
        device=DEVICE_ARGS,
    shell:
        LAUNCH
        + " stages.refine_irn train --index {input.index:q} --split {params.split:q} --cams {input.cams:q}"
        " --best {input.best:q} --cam-checkpoint {input.cam_model:q} --weights {params.weights:q} {params.options:q}"
        " {params.train:q} {params.crf:q} --crf-workers {threads} {params.device:q}"
        " --out {output.model:q} --metrics {output.metrics:q} --state-dir {params.state_dir:q} > {log:q} 2>&1"


# IRN refinement, part 2 (stages.refine_irn walk): the source's CAM file of a split, walked.
rule refine_irn:
    input:
        index=INDEX,
        model="results/refine/{refinement}/affinity.pt",
        cams=lambda wildcards: source_file(wildcards, f"cams_{wildcards.split}.h5"),
    output:
        "results/refine/{refinement}/cams_{split}.h5",
    log:
        "results/logs/refine_irn/{refinement}-{split}.log",
    benchmark:
        "results/benchmarks/refine_irn-{refinement}-{split}.tsv"
    wildcard_constraints:
        refinement=name_pattern(refinements_of("irn")),
    priority: TRUNK_PRIORITY
    threads: side_by_side(2)
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    params:
        walk=lambda wildcards: cli(
            {
                key: REFINEMENTS[wildcards.refinement][key]
                for key in ("alpha", "beta", "log_t")
            }
        ),
        device=DEVICE_ARGS,
    shell:
        LAUNCH
        + " stages.refine_irn walk --index {input.index:q} --split {wildcards.split:q} --cams {input.cams:q}"
        " --model {input.model:q} {params.walk:q} {params.device:q} --out {output:q} > {log:q} 2>&1"
