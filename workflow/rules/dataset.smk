rule prepare_dataset:
    output:
        INDEX_RAW,
    log:
        "results/logs/prepare_dataset.log",
    benchmark:
        "results/benchmarks/prepare_dataset.tsv"
    # The toy set's images are drawn in this many processes (nothing else can run yet).
    threads: 2
    params:
        kind=config["dataset"]["kind"],
        args=dataset_args(),
        workers=lambda wildcards, threads: (
            ["--workers", threads] if config["dataset"]["kind"] == "toy" else []
        ),
    shell:
        PYTHON
        + " stages.prepare_dataset --kind {params.kind:q} --index {output:q} {params.args:q} {params.workers:q}"
        " > {log:q} 2>&1"


rule check_dataset:
    input:
        INDEX_RAW,
    output:
        INDEX,
    log:
        "results/logs/check_dataset.log",
    params:
        policy=config["dataset"]["check"]["policy"],
        # Not an output: Snakemake deletes a failed job's outputs, and the report is most
        # useful exactly when the check fails.
        report="results/dataset/check_report.csv",
    shell:
        PYTHON + " stages.check_dataset --index {input:q} --policy {params.policy:q}"
        " --report {params.report:q} --out-index {output:q} > {log:q} 2>&1"
