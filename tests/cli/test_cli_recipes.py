"""``streamsynth config example --recipe`` and stage-graph config errors through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from streamsynth.cli.main import app
from streamsynth.config import load_settings


def _recipe(runner: CliRunner, tmp_path: Path, *args: str) -> Path:
    target = tmp_path / "recipe.yaml"
    result = runner.invoke(app, ["config", "example", *args, "-o", str(target)])
    assert result.exit_code == 0, result.stderr
    return target


def test_nemotron_cc_recipe_validates_and_splits_by_quality(
    runner: CliRunner, tmp_path: Path
) -> None:
    target = _recipe(runner, tmp_path, "--recipe", "nemotron-cc")
    result = runner.invoke(app, ["config", "validate", str(target)])
    assert result.exit_code == 0, result.stderr
    assert "wikipedia_paraphrasing when bucketed_results lte 11" in result.stdout
    settings = load_settings(target)
    routes = {s.task: s.when for s in settings.stages}
    high = {"bucketed_results": {"gt": 11}}
    assert routes == {
        "diverse_qa": high,
        "distill": high,
        "extract_knowledge": high,
        "knowledge_list": high,
        "wikipedia_paraphrasing": {"bucketed_results": {"lte": 11}},
    }
    # The budgets are the tasks' own defaults: the recipe overrides no generation setting.
    assert all(not s.generation.model_dump(exclude_unset=True) for s in settings.stages)
    graph = settings.stage_graph()
    for q, expected in (
        (11, {"wikipedia_paraphrasing"}),
        (12, set(routes) - {"wikipedia_paraphrasing"}),
    ):
        assert {n for n in graph.order if graph.nodes[n].when.matches({"bucketed_results": q})} == (
            expected
        )


async def test_nemotron_cc_recipe_stages_get_the_tutorials_budgets(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamsynth.llm.factory import build_llm_client
    from streamsynth.stages.factory import build_stages
    from streamsynth.stages.nemotron_cc.tasks import TASK_SPECS, default_generation_config

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")  # the recipe reads the key from there
    settings = load_settings(_recipe(runner, tmp_path, "--recipe", "nemotron-cc"))
    client = build_llm_client(settings.llm)
    try:
        built = {b.name: b.stage for b in build_stages(settings, client)}
    finally:
        await client.aclose()
    for name, stage in built.items():
        config = stage.generation_config  # type: ignore[attr-defined]
        assert config == default_generation_config(TASK_SPECS[name]), name
        # The tutorial: 1600 output tokens for the high-quality tasks, 512 for paraphrasing.
        assert config.max_tokens == (512 if name == "wikipedia_paraphrasing" else 1600), name
        assert (config.temperature, config.top_p) == (0.5, 0.9)


def test_nemotron_cc_recipe_field_and_threshold(runner: CliRunner, tmp_path: Path) -> None:
    target = _recipe(
        runner, tmp_path, "--recipe", "nemotron-cc", "--quality-field", "q", "--threshold", "17"
    )
    settings = load_settings(target)
    assert [s.when for s in settings.stages] == [{"q": {"gt": 17}}] * 4 + [{"q": {"lte": 17}}]
    text = target.read_text()
    assert text.startswith("# streamsynth worker: the Nemotron-CC")  # the comments are kept
    bad = runner.invoke(app, ["config", "example", "--recipe", "chain", "--threshold", "3"])
    assert bad.exit_code == 2 and "nemotron-cc only" in bad.stderr


def test_chain_recipe_validates(runner: CliRunner, tmp_path: Path) -> None:
    target = _recipe(runner, tmp_path, "--recipe", "chain")
    result = runner.invoke(app, ["config", "validate", str(target)])
    assert result.exit_code == 0, result.stderr
    assert "qa from paraphrase -> chain.qa" in result.stdout
    graph = load_settings(target).stage_graph()
    assert graph.roots == ("paraphrase",)
    assert graph.nodes["paraphrase"].children == ("qa", "judge")


def _base() -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": "127.0.0.1:1", "input_topic": "in", "dlq_topic": "dlq"},
        "llm": {"base_url": "http://127.0.0.1:1/v1", "model": "m"},
        "stages": [
            {"task": "wikipedia_paraphrasing", "name": "a", "output_topic": "o.a"},
            {"task": "diverse_qa", "name": "b", "output_topic": "o.b"},
            {"task": "distill", "name": "c", "output_topic": "o.c"},
        ],
    }


BAD_GRAPHS = [
    pytest.param(
        {0: {"input_from": "c"}, 2: {"input_from": "a"}}, "stages.0.input_from", "cycle", id="cycle"
    ),
    pytest.param(
        {1: {"input_from": "nope"}},
        "stages.1.input_from",
        "no stage is named 'nope'",
        id="unknown-upstream",
    ),
    pytest.param({2: {"input_from": ["a", "b"]}}, "stages.2.input_from", "fan-in", id="fan-in"),
    pytest.param(
        {2: {"when": {"bucketed_results": {"greater": 11}}}},
        "stages.2.when.bucketed_results.greater",
        "unknown condition operator",
        id="bad-operator",
    ),
    pytest.param(
        {2: {"when": {"bucketed_results": {"gt": [11]}}}},
        "stages.2.when.bucketed_results.gt",
        "takes a number or a string",
        id="wrong-value-type",
    ),
    pytest.param(
        {1: {"when": {"lang": {"exists": "yes"}}}},
        "stages.1.when.lang.exists",
        "true or false",
        id="exists-type",
    ),
]


@pytest.mark.parametrize(("edits", "path", "message"), BAD_GRAPHS)
def test_bad_graph_fails_validate_with_exit_2_naming_the_field(
    runner: CliRunner, tmp_path: Path, edits: dict[int, dict[str, Any]], path: str, message: str
) -> None:
    cfg = _base()
    for index, keys in edits.items():
        cfg["stages"][index].update(keys)
    target = tmp_path / "bad.yaml"
    target.write_text(yaml.safe_dump(cfg))
    for command in (["config", "validate", str(target)], ["run", "-c", str(target)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, (command, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ")
        assert f"{path}: " in result.stderr and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_streamsynth_run_process_exits_2_on_a_cycle(tmp_path: Path) -> None:
    cfg = _base()
    cfg["stages"][1]["input_from"] = "c"
    cfg["stages"][2]["input_from"] = "b"
    target = tmp_path / "cycle.yaml"
    target.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "streamsynth.cli.main", "run", "-c", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "stages.1.input_from: cycle: b -> c -> b" in lines[0]
