# The paper's ablations (config `studies:`): one table, plot and report section per study, from
# the evaluations of its arms. The arms' jobs are the rules of the other files: RUN (common.smk)
# plans each arm and finds a job's plan by its key, so an artifact two arms share is one job.


rule study_table:
    input:
        evaluations=lambda w: RUN.evaluation_files(w.study),
    output:
        table=report(
            f"{RESULTS}/studies/{{study}}/table.csv",
            caption="../report/study.rst",
            category="Studies",
            subcategory="{study}",
            labels={"study": "{study}", "item": "table.csv (download)"},
        ),
        plot=report(
            f"{RESULTS}/studies/{{study}}/plot.png",
            caption="../report/study.rst",
            category="Studies",
            subcategory="{study}",
            labels={"study": "{study}", "item": "plot"},
        ),
        section=report(
            f"{RESULTS}/studies/{{study}}/section.html",
            caption="../report/study.rst",
            category="Studies",
            subcategory="{study}",
            labels={"study": "{study}", "item": "table: ours beside the paper"},
        ),
    log:
        f"{LOGS}/study_table/{{study}}.log",
    wildcard_constraints:
        study=NAME,
    conda:
        "../../envs/anogen.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        study=lambda w: as_json(RUN.study_spec(w.study)),
    script:
        "../scripts/study_table.py"


# `snakemake study_<name>`: one study; `snakemake paper`: every study of the config.
for _study in RUN.studies:

    rule:
        name:
            f"study_{_study}"
        input:
            study_outputs(_study),
        localrule: True


rule paper:
    input:
        every_study_output,
    localrule: True
