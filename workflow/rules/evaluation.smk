# Evaluation per (category, detector, variant) and the summary tables.


rule evaluate_detector:
    input:
        dataset_inputs,
        detector=upstream("evaluation", of="detector"),
    output:
        metrics=output_pattern("evaluation", "metrics.json"),
        manifest=output_pattern("evaluation", "manifest.json"),
        examples=report(
            directory(output_pattern("evaluation", "examples")),
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
            output_pattern("evaluation", "training_loss.png"),
            caption="../report/detector_loss.rst",
            category="Stage 3, training losses",
            subcategory="{category}",
            labels={"detector": "{detector}", "variant": "{variant}"},
        ),
    log:
        log_pattern("evaluation", "evaluate_detector"),
    conda:
        "../../envs/anogen.yaml"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        spec=job_param("evaluation", "spec"),
        inputs=job_param("evaluation", "inputs"),
        runtime=job_param("evaluation", "runtime"),
    script:
        "../scripts/evaluate_detector.py"


rule summarize:
    input:
        metrics=every("evaluation"),
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
