# Stage 2: boxes on the foreground of every normal image, blended latent inpainting inside them.


rule estimate_foreground:
    input:
        dataset_inputs,
    output:
        manifest=f"{RESULTS}/foreground/{{category}}/{{key}}/manifest.json",
    log:
        f"{LOGS}/estimate_foreground/{{category}}/{{key}}.log",
    conda:
        "../../envs/anogen.yaml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        spec=lambda w: as_json(PLAN.foreground_spec(w.category)),
        inputs=lambda w: as_json(PLAN.foreground_inputs(w.category)),
        data_root=DATA_ROOT,
        dataset=as_json(PLAN.dataset_params()),  # data layout options (anogen.data.layouts)
    script:
        "../scripts/estimate_foreground.py"


rule generate_anomalies:
    input:
        support=lambda w: support_output(w.category, w.defect),
        embedding=lambda w: embedding_output(
            w.category, w.defect, "learned_embeds.safetensors"
        ),
        # A defect with a box template samples its boxes on it: no foreground set is needed.
        foreground=lambda w: (
            []
            if PLAN.box_template(w.category, w.defect)
            else foreground_output(w.category)
        ),
        model=model_inputs,
    output:
        manifest=f"{RESULTS}/generated/{{category}}/{{defect}}/{{key}}/manifest.json",
        montage=report(
            f"{RESULTS}/generated/{{category}}/{{defect}}/{{key}}/montage.png",
            caption="../report/montage.rst",
            category="Stage 2: generated anomalies",
            subcategory="{category}",
            labels={"category": "{category}", "defect": "{defect}"},
        ),
    log:
        f"{LOGS}/generate_anomalies/{{category}}/{{defect}}/{{key}}.log",
    conda:
        "../../envs/anogen.yaml"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        spec=lambda w: as_json(PLAN.generation_spec(w.category, w.defect)),
        inputs=lambda w: as_json(PLAN.generation_inputs(w.category, w.defect)),
        data_root=DATA_ROOT,
        dataset=as_json(PLAN.dataset_params()),  # data layout options (anogen.data.layouts)
        model=PLAN.model_path,
        revision=config["diffusion"]["revision"],
        batch_size=config["generation"]["batch_size"],
        channels_last=config["generation"]["channels_last"],
        compile=config["generation"]["compile"],
        # Its path only (moving a clone reruns nothing); its sha256 is in the spec.
        template=lambda w: str(PLAN.box_template(w.category, w.defect) or ""),
    script:
        "../scripts/generate_anomalies.py"


rule export_generated:
    input:
        generated=[generation_output(c, d) for c, d in PLAN.pairs()],
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
                    f"{c}/{d}": PLAN.generation_key(c, d) for c, d in PLAN.pairs()
                }
            }
        ),
    script:
        "../scripts/export_generated.py"
