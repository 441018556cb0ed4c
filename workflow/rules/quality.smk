# Generation quality (IS, IC-LPIPS, KID) of every generated set, planned only when both metric
# weight files are configured (quality.inception_weights, quality.lpips_weights).


rule generation_quality:
    input:
        dataset_inputs,
        generation=upstream("quality", of="generation"),
        support=upstream("quality", of="support"),
    output:
        quality=output_pattern("quality", "quality.json"),
        manifest=output_pattern("quality", "manifest.json"),
    log:
        log_pattern("quality", "generation_quality"),
    conda:
        "../../envs/anogen.yaml"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        spec=job_param("quality", "spec"),
        inputs=job_param("quality", "inputs"),
        runtime=job_param("quality", "runtime"),
    script:
        "../scripts/generation_quality.py"


rule quality_table:
    input:
        quality=every("quality", "quality.json"),
    output:
        csv=report(
            QUALITY_CSV,
            caption="../report/generation_quality.rst",
            category="Summary",
            labels={"item": "generation_quality.csv (download)"},
        ),
        html=report(
            f"{RESULTS}/report/generation_quality.html",
            caption="../report/generation_quality.rst",
            category="Summary",
            labels={"item": "generation quality: IS, IC-LPIPS, KID"},
        ),
    log:
        f"{LOGS}/quality_table.log",
    conda:
        "../../envs/anogen.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/quality_table.py"
