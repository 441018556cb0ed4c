"""The artifact graph (anogen.artifacts + Plan): one table serves keys, paths, rules and gc."""

import json
from pathlib import Path

import pytest

from anogen.artifacts import STAGES, thaw
from anogen.commands.keys import referenced_dirs
from anogen.keys import content_key
from tests.test_config_keys import demo_raw, plan


@pytest.fixture(scope="module")
def demo_plan():
    return plan(demo_raw())


def test_every_upstream_artifact_is_an_input_with_its_key(demo_plan):
    for stage in STAGES:
        for values in demo_plan.instances(stage):
            inputs = demo_plan.inputs(stage, *values)
            for name, (up, up_values) in demo_plan.upstream(stage, *values).items():
                assert inputs[name] == demo_plan.key(up, *up_values), (stage, values, name)
            # the rest are the data set, data fingerprints and the external files (the model, the
            # DeSTSeg teacher, the texture folder): never another artifact
            others = set(inputs) - set(demo_plan.upstream(stage, *values))
            assert others <= {"dataset", "data", "model", "teacher", "textures"}, (stage, others)


def test_job_spec_is_what_the_key_hashes(demo_plan):
    for stage in STAGES:
        for values in demo_plan.instances(stage):
            job = demo_plan.job(stage, *values)
            assert job.key == content_key(thaw(job.spec), thaw(job.inputs)) == demo_plan.key(stage, *values)
            assert job.wildcards == dict(zip(STAGES[stage].wildcards, values, strict=True))
            assert Path(job.path("results")).parent.name == job.key
            with pytest.raises(TypeError):
                job.spec["category"] = "changed"  # frozen: a job spec is never edited after planning
            json.dumps(thaw(job.runtime))  # the runtime part travels as JSON params


def test_runtime_values_stay_out_of_the_spec(demo_plan):
    emb = demo_plan.job("embedding", "cat_a", "hole")
    assert {"checkpoint_every", "cuda_graph", "gradient_checkpointing", "model"} <= set(emb.runtime)
    assert not {"checkpoint_every", "cuda_graph", "gradient_checkpointing"} & set(emb.spec)
    gen = demo_plan.job("generation", "cat_a", "hole")
    assert {"batch_size", "channels_last", "compile"} <= set(gen.runtime)
    assert "mixed_precision" in gen.spec and "batch_size" not in gen.spec
    ev = demo_plan.job("evaluation", "cat_a", "draem", "baseline")
    assert "batch_size" in ev.runtime and "batch_size" not in ev.spec


def test_patterns_paths_and_gc_agree(demo_plan):
    results = demo_plan.config["results_dir"]
    for stage, table in STAGES.items():
        for values in demo_plan.instances(stage):
            key = demo_plan.key(stage, *values)
            pattern = table.pattern(results).format(key=key, **dict(zip(table.wildcards, values, strict=True)))
            assert pattern == demo_plan.path(stage, *values)
    dirs = referenced_dirs(demo_plan)
    expected = sum(len(demo_plan.instances(stage)) for stage in STAGES)
    assert len(dirs) == expected
    assert Path(demo_plan.path("evaluation", "cat_b", "destseg", "anogen")).parent in dirs
    assert STAGES["evaluation"].log_pattern("logs", "evaluate_detector") == (
        "logs/evaluate_detector/{category}/{detector}/{variant}/{key}.log"
    )
