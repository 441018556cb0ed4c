# Evaluation per (category, detector, variant) and the summary tables.


rule evaluate_detector:
    input:
        dataset_inputs,
        detector=lambda w: detector_output(w.category, w.detector, w.variant),
    output:
        metrics=f"{RESULTS}/evaluation/{{category}}/{{detector}}/{{variant}}/{{key}}/metrics.json",
        manifest=f"{RESULTS}/evaluation/{{category}}/{{detector}}/{{variant}}/{{key}}/manifest.json",
        examples=report(
            directory(
                f"{RESULTS}/evaluation/{{category}}/{{detector}}/{{variant}}/{{key}}/examples"
            ),
            patterns=["{defect}/{image}.png"],
            caption="../report/anomaly_maps.rst",
            category="Stage 3: anomaly maps",
            subcategory="{category}",
            labels={
                "detector": "{detector}",
                "variant": "{variant}",
                "defect": "{defect}",
                "image": "{image}",
            },
        ),
        # drawn here from the detector's train_log.csv: train_detector's declared outputs are
        # deleted before a rerun, and its log must survive one (see detectors.smk)
        loss_plot=report(
            f"{RESULTS}/evaluation/{{category}}/{{detector}}/{{variant}}/{{key}}/training_loss.png",
            caption="../report/detector_loss.rst",
            category="Stage 3, training losses",
            subcategory="{category}",
            labels={"detector": "{detector}", "variant": "{variant}"},
        ),
    log:
        f"{LOGS}/evaluate_detector/{{category}}/{{detector}}/{{variant}}/{{key}}.log",
    conda:
        "../../envs/anogen.yaml"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        spec=lambda w: as_json(PLAN.evaluation_spec(w.category, w.detector, w.variant)),
        inputs=lambda w: as_json(
            PLAN.evaluation_inputs(w.category, w.detector, w.variant)
        ),
        data_root=DATA_ROOT,
        dataset=as_json(PLAN.dataset_params()),  # data layout options (anogen.data.layouts)
    script:
        "../scripts/evaluate_detector.py"


rule summarize:
    input:
        metrics=[evaluation_output(c, m, v) for c, m, v in PLAN.detector_runs()],
    output:
        summary=report(
            SUMMARY_CSV,
            caption="../report/summary.rst",
            category="Summary",
            labels={"item": "summary.csv (download)"},
        ),
        table1=report(
            TABLE1_CSV,
            caption="../report/table1.rst",
            category="Summary",
            labels={"item": "table1.csv (download)"},
        ),
        # the same numbers rendered for the report (anogen.evaluation.report)
        table1_html=report(
            f"{RESULTS}/report/table1.html",
            caption="../report/table1.rst",
            category="Summary",
            labels={"item": "Table 1: baseline vs AnoGen"},
        ),
        summary_html=report(
            f"{RESULTS}/report/summary.html",
            caption="../report/summary.rst",
            category="Summary",
            labels={"item": "summary: every category"},
        ),
        comparison=report(
            f"{RESULTS}/report/comparison.png",
            caption="../report/comparison.rst",
            category="Summary",
            labels={"item": "figure: baseline vs AnoGen"},
        ),
        notes=report(
            f"{RESULTS}/report/notes.html",
            caption="../report/notes.rst",
            category="Summary",
            labels={"item": "notes (random models, fallbacks)"},
        ),
    log:
        f"{LOGS}/summarize.log",
    conda:
        "../../envs/anogen.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/summarize.py"
