# The data set, the diffusion backbone and the support sets.


rule demo_data:
    output:
        marker=f"{config['demo']['root']}/demo_spec.json",
    params:
        spec=as_json(config["demo"]),
    log:
        f"{LOGS}/demo_data.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/anogen.yaml"
    script:
        "../scripts/demo_data.py"


# Only when diffusion.tiny.family is set: a real model folder must never be overwritten.
if config["diffusion"]["tiny"]["family"]:

    rule tiny_model:
        output:
            index=f"{config['diffusion']['model']}/model_index.json",
        params:
            spec=as_json(
                {
                    "family": config["diffusion"]["tiny"]["family"],
                    "seed": config["diffusion"]["tiny"]["seed"],
                    "resolution": config["diffusion"]["tiny"]["resolution"],
                }
            ),
        log:
            f"{LOGS}/tiny_model.log",
        resources:
            mem_mb=2000,
            runtime=10,
        conda:
            "../../envs/anogen.yaml"
        script:
            "../scripts/tiny_model.py"


rule select_support:
    input:
        dataset_inputs,
    output:
        manifest=f"{RESULTS}/support/{{category}}/{{defect}}/{{key}}/manifest.json",
    params:
        spec=lambda w: as_json(PLAN.support_spec(w.category, w.defect)),
        inputs=lambda w: as_json(PLAN.support_inputs(w.category, w.defect)),
        data_root=DATA_ROOT,
        dataset=as_json(PLAN.dataset_params()),  # data layout options (anogen.data.layouts)
    log:
        f"{LOGS}/select_support/{{category}}/{{defect}}/{{key}}.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/anogen.yaml"
    script:
        "../scripts/select_support.py"

