# Evaluation per (category, detector, variant) and the summary tables.


rule evaluate_detector:
    input:
        dataset_inputs,
        detector=lambda w: detector_output(w.category, w.detector, w.variant),
        support=support_for_evaluation,
    output:
        metrics=f"{RESULTS}/evaluation/{{category}}/{{detector}}/{{variant}}/{{key}}/metrics.json",
        manifest=f"{RESULTS}/evaluation/{{category}}/{{detector}}/{{variant}}/{{key}}/manifest.json",
        examples=report(
            directory(f"{RESULTS}/evaluation/{{category}}/{{detector}}/{{variant}}/{{key}}/examples"),
            patterns=["{name}.png"],
            caption="../report/anomaly_maps.rst",
            category="Stage 3: anomaly maps",
            subcategory="{category}",
            labels={"category": "{category}", "detector": "{detector}", "variant": "{variant}"},
        ),
    params:
        spec=lambda w: as_json(PLAN.evaluation_spec(w.category, w.detector, w.variant)),
        inputs=lambda w: as_json(PLAN.evaluation_inputs(w.category, w.detector, w.variant)),
        data_root=DATA_ROOT,
        dataset=as_json(PLAN.dataset_params()),  # data layout options (anogen.data.layouts)
    log:
        f"{LOGS}/evaluate_detector/{{category}}/{{detector}}/{{variant}}/{{key}}.log",
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/anogen.yaml"
    script:
        "../scripts/evaluate_detector.py"


rule summarize:
    input:
        metrics=[evaluation_output(c, m, v) for c, m, v in PLAN.detector_runs()],
    output:
        summary=report(SUMMARY_CSV, caption="../report/summary.rst", category="Summary"),
        table1=report(TABLE1_CSV, caption="../report/table1.rst", category="Summary"),
    log:
        f"{LOGS}/summarize.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/anogen.yaml"
    script:
        "../scripts/summarize.py"
