# Scribble sources for scribble-supervised variants (`scribbles:` of a variant): PNGs of the
# training split, class on strokes and 255 elsewhere.


rule scribbles:
    input:
        index=INDEX,
    output:
        directory("results/scribbles/{source}/{split}"),
    log:
        "results/logs/scribbles/{source}-{split}.log",
    benchmark:
        "results/benchmarks/scribbles-{source}-{split}.tsv"
    wildcard_constraints:
        source="dataset|synthetic",
    params:
        strokes=cli(config["scribbles"]),
    shell:
        PYTHON
        + " stages.scribbles --index {input.index:q} --split {wildcards.split:q} --source {wildcards.source:q}"
        " {params.strokes:q} --out-dir {output:q} > {log:q} 2>&1"


rule scribbles_pseudo:
    input:
        index=INDEX,
        labels="results/pseudo_labels/{refinement}/{split}",
    output:
        directory("results/scribbles/pseudo/{refinement}/{split}"),
    log:
        "results/logs/scribbles/pseudo-{refinement}-{split}.log",
    benchmark:
        "results/benchmarks/scribbles-pseudo-{refinement}-{split}.tsv"
    params:
        strokes=cli(config["scribbles"]),
    shell:
        PYTHON
        + " stages.scribbles --index {input.index:q} --split {wildcards.split:q} --source pseudo"
        " --pseudo-labels {input.labels:q} {params.strokes:q} --out-dir {output:q} > {log:q} 2>&1"
