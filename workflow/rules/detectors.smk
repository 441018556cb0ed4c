# Stage 3: DRAEM and DeSTSeg, baseline and weakly supervised with the generated anomalies.


# model.safetensors and train_log.csv are listed (and verified) in the manifest but not
# declared outputs: Snakemake deletes declared outputs before a rerun, and a resumed or rerun
# job continues from them (train_log.csv grows with the steps, the model marks completion).
rule train_detector:
    input:
        dataset_inputs,
        check_detector_sources,
        generated=upstream("detector", of="generation"),
    output:
        manifest=output_pattern("detector"),
    log:
        log_pattern("detector", "train_detector"),
    conda:
        "../../envs/anogen.yaml"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    params:
        spec=job_param("detector", "spec"),
        inputs=job_param("detector", "inputs"),
        runtime=job_param("detector", "runtime"),
    script:
        "../scripts/train_detector.py"
