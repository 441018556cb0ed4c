# The data set, the diffusion backbone and the support sets.


rule demo_data:
    output:
        marker=f"{config['demo']['root']}/demo_spec.json",
    log:
        f"{LOGS}/demo_data.log",
    conda:
        "../../envs/anogen.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        spec=as_json(config["demo"]),
    script:
        "../scripts/demo_data.py"


# Only when diffusion.model is 'tiny:<family>' (the demo asks for it by name): the tiny random
# model goes into its own folder under resources/models, never where a real model could be.
if PLAN.tiny_family:

    rule tiny_model:
        output:
            index=f"{PLAN.model_path}/model_index.json",
        log:
            f"{LOGS}/tiny_model.log",
        conda:
            "../../envs/anogen.yaml"
        resources:
            mem_mb=2000,
            runtime=10,
        params:
            spec=as_json(
                {
                    "family": PLAN.tiny_family,
                    "seed": config["diffusion"]["tiny"]["seed"],
                    "resolution": config["diffusion"]["tiny"]["resolution"],
                    # saved as the real checkpoints are published (anogen.diffusion.published);
                    # a model saved in another layout by an older checkout is rebuilt
                    "layout": "published",
                }
            ),
        script:
            "../scripts/tiny_model.py"


rule select_support:
    input:
        dataset_inputs,
    output:
        manifest=output_pattern("support"),
    log:
        log_pattern("support", "select_support"),
    conda:
        "../../envs/anogen.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        spec=job_param("support", "spec"),
        inputs=job_param("support", "inputs"),
        runtime=job_param("support", "runtime"),
    script:
        "../scripts/select_support.py"
