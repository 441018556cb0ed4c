# Stage 1: one mask-guided textual-inversion embedding per (category, defect), learned here
# (learn_embedding) or, with embedding.source: authors, imported from the authors' published
# embeddings.pt (import_embedding). Exactly one of the two rules exists, with the same outputs,
# so generation reads the same files either way.


if config["embedding"]["source"] == "authors":

    rule import_embedding:
        # No support set and no diffusion model: `snakemake support embeddings` needs no weights.
        output:
            manifest=f"{RESULTS}/embeddings/{{category}}/{{defect}}/{{key}}/manifest.json",
            embedding=f"{RESULTS}/embeddings/{{category}}/{{defect}}/{{key}}/learned_embeds.safetensors",
            loss_csv=f"{RESULTS}/embeddings/{{category}}/{{defect}}/{{key}}/loss.csv",
            loss_plot=f"{RESULTS}/embeddings/{{category}}/{{defect}}/{{key}}/loss.png",
        log:
            f"{LOGS}/import_embedding/{{category}}/{{defect}}/{{key}}.log",
        conda:
            "../../envs/anogen.yaml"
        resources:
            mem_mb=1000,
            runtime=5,
        params:
            spec=lambda w: as_json(PLAN.embedding_spec(w.category, w.defect)),
            inputs=lambda w: as_json(PLAN.embedding_inputs(w.category, w.defect)),
            source=lambda w: str(PLAN.embedding_source(w.category, w.defect)),
        script:
            "../scripts/import_embedding.py"

else:

    rule learn_embedding:
        input:
            support=lambda w: support_output(w.category, w.defect),
            model=model_inputs,
        output:
            manifest=f"{RESULTS}/embeddings/{{category}}/{{defect}}/{{key}}/manifest.json",
            embedding=f"{RESULTS}/embeddings/{{category}}/{{defect}}/{{key}}/learned_embeds.safetensors",
            loss_csv=f"{RESULTS}/embeddings/{{category}}/{{defect}}/{{key}}/loss.csv",
            loss_plot=report(
                f"{RESULTS}/embeddings/{{category}}/{{defect}}/{{key}}/loss.png",
                caption="../report/embedding_loss.rst",
                category="Stage 1: embedding loss",
                subcategory="{category}",
                labels={"category": "{category}", "defect": "{defect}"},
            ),
        log:
            f"{LOGS}/learn_embedding/{{category}}/{{defect}}/{{key}}.log",
        conda:
            "../../envs/anogen.yaml"
        threads: THREADS
        resources:
            gpu=1,
            mem_mb=16000,
            runtime=240,
        params:
            spec=lambda w: as_json(PLAN.embedding_spec(w.category, w.defect)),
            inputs=lambda w: as_json(PLAN.embedding_inputs(w.category, w.defect)),
            model=PLAN.model_path,
            revision=config["diffusion"]["revision"],
            checkpoint_every=config["embedding"]["checkpoint_every"],
            cuda_graph=config["embedding"]["cuda_graph"],
        script:
            "../scripts/learn_embedding.py"
