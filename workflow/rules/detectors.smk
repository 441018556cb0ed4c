# Stage 3: DRAEM and DeSTSeg, baseline and weakly supervised with the generated anomalies.


# model.safetensors and train_log.csv are listed (and verified) in the manifest but not
# declared outputs: Snakemake deletes declared outputs before a rerun, and a resumed or rerun
# job continues from them (train_log.csv grows with the steps, the model marks completion).
rule train_detector:
    input:
        dataset_inputs,
        generated=generated_for_detector,
    output:
        manifest=f"{RESULTS}/detectors/{{category}}/{{detector}}/{{variant}}/{{key}}/manifest.json",
    log:
        f"{LOGS}/train_detector/{{category}}/{{detector}}/{{variant}}/{{key}}.log",
    conda:
        "../../envs/anogen.yaml"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    params:
        spec=lambda w: as_json(PLAN.detector_spec(w.category, w.detector, w.variant)),
        inputs=lambda w: as_json(
            PLAN.detector_inputs(w.category, w.detector, w.variant)
        ),
        data_root=DATA_ROOT,
        dataset=as_json(PLAN.dataset_params()),  # data layout options (anogen.data.layouts)
        checkpoint_every=config["detectors"]["checkpoint_every"],
    script:
        "../scripts/train_detector.py"
