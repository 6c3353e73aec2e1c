rule pseudo_labels:
    input:
        index=INDEX,
        cams=refined_cams,
        best=refined_best,
    output:
        directory("results/pseudo_labels/{refinement}/{split}"),
    log:
        "results/logs/pseudo_labels/{refinement}-{split}.log",
    benchmark:
        "results/benchmarks/pseudo_labels-{refinement}-{split}.tsv"
    priority: TRUNK_PRIORITY
    threads: side_by_side(8)
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        threshold=config["pseudo_labels"]["threshold"],
        options=cli(config["pseudo_labels"], exclude=("threshold", "crf")),
        crf=cli(config["pseudo_labels"]["crf"]),
    shell:
        PYTHON
        + " stages.pseudo_labels --index {input.index:q} --cams {input.cams:q} --split {wildcards.split:q}"
        " --threshold {params.threshold:q} --best {input.best:q} {params.options:q} {params.crf:q}"
        " --workers {threads} --out-dir {output:q} > {log:q} 2>&1"


rule eval_pseudo:
    input:
        index=INDEX,
        labels=f"results/pseudo_labels/{{refinement}}/{config['cam']['infer']['split']}",
    output:
        summary="results/pseudo_labels/{refinement}/eval/summary.csv",
        per_class="results/pseudo_labels/{refinement}/eval/per_class.csv",
    log:
        "results/logs/eval_pseudo/{refinement}.log",
    params:
        split=config["cam"]["eval"]["split"],
    shell:
        PYTHON
        + " stages.eval_pseudo --index {input.index:q} --labels {input.labels:q} --split {params.split:q}"
        " --out-summary {output.summary:q} --out-per-class {output.per_class:q} > {log:q} 2>&1"


rule gt_labels:
    """ORACLE: the split's ground-truth masks as a label folder, for variants with pseudo_labels: gt."""
    input:
        index=INDEX,
    output:
        directory("results/gt_labels/{split}"),
    log:
        "results/logs/gt_labels/{split}.log",
    resources:
        runtime=30,
    shell:
        PYTHON
        + " stages.gt_labels --index {input.index:q} --split {wildcards.split:q} --no-progress"
        " --out-dir {output:q} > {log:q} 2>&1"
