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
                }
            ),
        script:
            "../scripts/tiny_model.py"


rule select_support:
    input:
        dataset_inputs,
    output:
        manifest=f"{RESULTS}/support/{{category}}/{{defect}}/{{key}}/manifest.json",
    log:
        f"{LOGS}/select_support/{{category}}/{{defect}}/{{key}}.log",
    conda:
        "../../envs/anogen.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        spec=lambda w: as_json(PLAN.support_spec(w.category, w.defect)),
        inputs=lambda w: as_json(PLAN.support_inputs(w.category, w.defect)),
        data_root=DATA_ROOT,
        origin=lambda w: PLAN.support_origin(w.category, w.defect),
        dataset=as_json(PLAN.dataset_params()),  # data layout options (anogen.data.layouts)
    script:
        "../scripts/select_support.py"
