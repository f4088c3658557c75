"""Render the streamsynth chart without a helm binary (PyPI helm-python-sdk).

    python deploy/helm/render.py [-f values.yaml ...] [--release NAME] [--namespace NS]

Prints the manifests as `helm template` would; schema violations and template `fail`s exit 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parent / "streamsynth"


def _merge(into: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-f", "--values", action="append", default=[], type=Path)
    parser.add_argument("--release", default="streamsynth")
    parser.add_argument("--namespace", default="default")
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for path in args.values:
        _merge(values, yaml.safe_load(path.read_text()) or {})
    try:
        with helm.Chart.load(CHART) as chart:
            out = chart.render(values or None, name=args.release, namespace=args.namespace)
    except helm.HelmError as exc:
        print(f"render failed: {exc}", file=sys.stderr)
        return 1
    for name in sorted(out):
        if name.endswith("NOTES.txt") or not out[name].strip():
            continue
        print(f"---\n# Source: {name}\n{out[name].strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
