"""Nothing lands in the working directory unless asked: the response cache's default file
is in the user's cache directory, and the deploy files put it on a mounted volume."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streamsynth.config import CacheSettings, settings_from_dict

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose"


def test_cache_default_is_in_the_user_cache_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert CacheSettings().path == tmp_path / "streamsynth" / "cache.sqlite3"
    settings = settings_from_dict(
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:9092", "input_topic": "in", "dlq_topic": "d"},
            "llm": {"base_url": "http://127.0.0.1:1/v1", "model": "m"},
            "stages": [{"task": "knowledge_list", "output_topic": "out"}],
        }
    )
    assert settings.llm.cache.path.is_absolute()
    assert settings.llm.cache.path.is_relative_to(tmp_path)


def test_compose_workers_keep_the_cache_on_a_named_volume() -> None:
    project = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    config = yaml.safe_load((COMPOSE / "streamsynth.yaml").read_text())
    cache_dir = str(Path(config["llm"]["cache"]["path"]).parent)
    workers = [s for name, s in project["services"].items() if name.startswith("worker-")]
    assert len(workers) == 2
    for worker in workers:
        mounts = dict(v.split(":")[:2][::-1] for v in worker["volumes"])
        assert mounts[cache_dir] in project["volumes"], worker["volumes"]
