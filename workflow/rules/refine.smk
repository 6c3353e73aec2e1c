rule refine_plmix:
    wildcard_constraints:
        refinement=name_pattern(refinements_of("plmix")),
    input:
        index=INDEX,
        model=CAM_MODEL,
        best="results/cam/eval/best.json",
    output:
        model="results/refine/{refinement}/model.pt",
        rounds="results/refine/{refinement}/rounds.csv",
    log:
        "results/logs/refine/{refinement}.log",
    benchmark:
        "results/benchmarks/refine-{refinement}.tsv"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=480,
    params:
        # Not an output: round state survives a killed job, and the re-run resumes.
        state_dir="results/refine/{refinement}/state",
        options=lambda wildcards: cli(
            REFINEMENTS[wildcards.refinement], exclude=("method", "train")
        ),
        train=lambda wildcards: cli(REFINEMENTS[wildcards.refinement]["train"]),
        split=config["cam"]["infer"]["split"],
        eval_split=config["cam"]["eval"]["split"],
        cams=cli(
            {
                "scales": config["cam"]["infer"]["scales"],
                "flip": config["cam"]["infer"]["flip"],
            }
        ),
        sweep=cli(config["cam"]["eval"], exclude=("split",)),
        crf=cli(config["pseudo_labels"]["crf"]),
        device=config["device"],
    shell:
        LAUNCH
        + " stages.refine --index {input.index} --split {params.split} --eval-split {params.eval_split}"
        " --checkpoint {input.model} --best {input.best} {params.options} {params.train} {params.cams}"
        " {params.sweep} {params.crf} --crf-workers {threads} --device {params.device}"
        " --out {output.model} --rounds-csv {output.rounds} --state-dir {params.state_dir} > {log} 2>&1"
