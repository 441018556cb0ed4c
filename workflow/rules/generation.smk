# Stage 2: boxes on the foreground of every normal image, blended latent inpainting inside them.


rule estimate_foreground:
    input:
        dataset_inputs,
    output:
        manifest=output_pattern("foreground"),
    log:
        log_pattern("foreground", "estimate_foreground"),
    conda:
        "../../envs/anogen.yaml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        spec=job_param("foreground", "spec"),
        inputs=job_param("foreground", "inputs"),
        runtime=job_param("foreground", "runtime"),
    script:
        "../scripts/estimate_foreground.py"


rule generate_anomalies:
    input:
        # the support images: the montage, and the masks of a learned box range (its key is then an input)
        support=job_artifact("generation", of="support"),
        embedding=upstream(
            "generation", of="embedding", name="learned_embeds.safetensors"
        ),
        # A defect with a box template samples its boxes on it: no foreground set is needed.
        foreground=upstream("generation", of="foreground"),
        model=model_inputs,
    output:
        manifest=output_pattern("generation"),
        montage=report(
            output_pattern("generation", "montage.png"),
            caption="../report/montage.rst",
            category="Stage 2: generated anomalies",
            subcategory="{category}",
            labels={"category": "{category}", "defect": "{defect}"},
        ),
    log:
        log_pattern("generation", "generate_anomalies"),
    conda:
        "../../envs/anogen.yaml"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        spec=job_param("generation", "spec"),
        inputs=job_param("generation", "inputs"),
        runtime=job_param("generation", "runtime"),
    script:
        "../scripts/generate_anomalies.py"


rule export_generated:
    input:
        generated=every("generation"),
    output:
        marker=f"{RESULTS}/export/generated-{PLAN.export_key}/dataset.json",
    log:
        f"{LOGS}/export_generated/{PLAN.export_key}.log",
    conda:
        "../../envs/anogen.yaml"
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        spec=as_json(
            {
                "generation": {
                    f"{c}/{d}": PLAN.key("generation", c, d) for c, d in PLAN.pairs()
                }
            }
        ),
    script:
        "../scripts/export_generated.py"
