# The results browser (stages/browse.py): a static page, one row per image, to find failure cases.


rule browse:
    input:
        index=INDEX,
        cams=f"results/cam/cams_{config['cam']['infer']['split']}.h5",
        best="results/cam/eval/best.json",
        pseudo=expand(
            "results/pseudo_labels/{refinement}/{split}",
            refinement=REFINEMENTS,
            split=config["cam"]["infer"]["split"],
        ),
        predictions=expand("results/eval/{variant}/predictions", variant=VARIANTS),
    output:
        directory("results/browse"),
    log:
        "results/logs/browse.log",
    benchmark:
        "results/benchmarks/browse.tsv"
    # the run's last job, usually alone: its rows drawn in as many processes (stages/browse.py)
    threads: 2
    params:
        pseudo=lambda wildcards, input: [
            f"{r}={path}" for r, path in zip(REFINEMENTS, input.pseudo)
        ],
        predictions=lambda wildcards, input: [
            f"{v}={path}" for v, path in zip(VARIANTS, input.predictions)
        ],
        train_split=config["cam"]["eval"]["split"],
        val_split=config["evaluation"]["split"],
        options=cli(config["browse"]),
    shell:
        PYTHON
        + " stages.browse --index {input.index:q} --cams {input.cams:q} --best {input.best:q}"
        " --train-split {params.train_split:q} --val-split {params.val_split:q}"
        " --pseudo-labels {params.pseudo:q} --predictions {params.predictions:q} {params.options:q}"
        " --workers {threads} --no-progress --out-dir {output:q} > {log:q} 2>&1"
