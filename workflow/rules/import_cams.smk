rule import_cams:
    input:
        index=INDEX,
        folder=lambda wildcards: REFINEMENTS[wildcards.refinement]["path"],
    output:
        "results/refine/{refinement}/cams_{split}.h5",
    log:
        "results/logs/import_cams/{refinement}-{split}.log",
    benchmark:
        "results/benchmarks/import_cams-{refinement}-{split}.tsv"
    # CAMs another method made, read from the refinement's folder into this project's CAM file;
    # eval_cam, pseudo labels and the variants read it as any other refinement's CAMs.
    wildcard_constraints:
        refinement=name_pattern(refinements_of("imported")),
    priority: TRUNK_PRIORITY
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        options=lambda wildcards: cli(
            REFINEMENTS[wildcards.refinement], exclude=("method", "path")
        ),
    shell:
        PYTHON
        + " stages.import_cams --index {input.index:q} --path {input.folder:q} --split {wildcards.split:q}"
        " {params.options:q} --out {output:q} > {log:q} 2>&1"
