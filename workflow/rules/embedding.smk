# Stage 1: one mask-guided textual-inversion embedding per (category, defect), learned here
# (learn_embedding) or, with embedding.source: authors, imported from the authors' published
# embeddings.pt (import_embedding). Exactly one of the two rules exists, with the same outputs,
# so generation reads the same files either way.


if config["embedding"]["source"] == "authors":

    rule import_embedding:
        # No support set and no diffusion model: `snakemake support embeddings` needs no weights.
        output:
            manifest=output_pattern("embedding"),
            embedding=output_pattern("embedding", "learned_embeds.safetensors"),
            loss_csv=output_pattern("embedding", "loss.csv"),
            loss_plot=output_pattern("embedding", "loss.png"),
        log:
            log_pattern("embedding", "import_embedding"),
        conda:
            "../../envs/anogen.yaml"
        resources:
            mem_mb=1000,
            runtime=5,
        params:
            spec=job_param("embedding", "spec"),
            inputs=job_param("embedding", "inputs"),
            runtime=job_param("embedding", "runtime"),
        script:
            "../scripts/import_embedding.py"

else:

    rule learn_embedding:
        input:
            support=upstream("embedding", of="support"),
            model=model_inputs,
        output:
            manifest=output_pattern("embedding"),
            embedding=output_pattern("embedding", "learned_embeds.safetensors"),
            loss_csv=output_pattern("embedding", "loss.csv"),
            loss_plot=report(
                output_pattern("embedding", "loss.png"),
                caption="../report/embedding_loss.rst",
                category="Stage 1: embedding loss",
                subcategory="{category}",
                labels={"category": "{category}", "defect": "{defect}"},
            ),
        log:
            log_pattern("embedding", "learn_embedding"),
        conda:
            "../../envs/anogen.yaml"
        threads: THREADS
        resources:
            gpu=1,
            mem_mb=16000,
            runtime=240,
        params:
            spec=job_param("embedding", "spec"),
            inputs=job_param("embedding", "inputs"),
            runtime=job_param("embedding", "runtime"),
        script:
            "../scripts/learn_embedding.py"
