"""Building and compiling the pipelines; their parameters as the compiled spec declares them."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from kuberlhf.errors import ConfigError

DEFAULT_PIPELINE = "rlhf-ppo"


def pipeline_names() -> list[str]:
    from kuberlhf.workflow.pipelines import PIPELINES

    return list(PIPELINES)


def _module(name: str) -> Any:
    from kuberlhf.workflow.pipelines import PIPELINES

    if name not in PIPELINES:
        raise ConfigError(f"pipeline {name!r}: unknown; known: {', '.join(PIPELINES)}")
    return importlib.import_module(PIPELINES[name])


def compile_settings(name: str) -> dict[str, tuple[int, str]]:
    """The pipeline's compile-time settings (the shape of its graph, e.g. ``rest``'s ``iterations``):
    ``{name: (default, description)}``; most pipelines have none."""
    return dict(getattr(_module(name), "SETTINGS", {}))


def build(name: str, registry: str | None = None, tag: str | None = None, settings: dict | None = None) -> Any:
    """The ``@dsl.pipeline`` function of pipeline ``name``, shaped by its compile ``settings``."""
    return _module(name).build(registry, tag, **(settings or {}))


def compile_pipeline(name: str, out: str | Path, registry: str | None = None, tag: str | None = None,
                     settings: dict | None = None) -> Path:
    """Write the pipeline's YAML (what the Kubeflow UI uploads) to ``out``."""
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(name, registry, tag, settings), str(out))
    return out


def split_settings(name: str, items: list[str]) -> tuple[dict[str, int], list[str]]:
    """``--param key=value`` items split into the pipeline's compile settings (checked: whole numbers of at
    least 1) and its run parameters."""
    known, settings, rest = compile_settings(name), {}, []
    for item in items:
        key, sep, text = item.partition("=")
        if key not in known:
            rest.append(item)
            continue
        try:
            value = int(text)
        except ValueError:
            value = 0
        if not sep or value < 1:
            raise ConfigError(f"--param {key}: a compile setting of {name}; expected a whole number >= 1, got {text!r}")
        settings[key] = value
    return settings, rest


def compile_targets(which: str, out: str | Path | None) -> list[tuple[str, Path]]:
    """(pipeline, YAML path) pairs for ``--pipeline NAME|all`` and ``--out FILE|DIR``.

    One pipeline: ``out`` is a ``.yaml`` file, or a folder that gets ``NAME.yaml``; all
    pipelines: ``out`` is a folder. Default folder: ``outputs/pipelines``.
    """
    names = pipeline_names() if which == "all" else [which]
    if which != "all" and which not in pipeline_names():
        raise ConfigError(f"--pipeline {which!r}: unknown; use all or one of {', '.join(pipeline_names())}")
    out = Path(out or "outputs/pipelines")
    if out.suffix in (".yaml", ".yml"):
        if len(names) > 1:
            raise ConfigError(f"--out {out}: a single file holds one pipeline; give a folder with --pipeline all")
        return [(names[0], out)]
    return [(name, out / f"{name}.yaml") for name in names]


def load_spec(path: str | Path) -> dict:
    """A compiled pipeline read back with the kfp SDK (raises if kfp cannot load it)."""
    from kfp.components import load_component_from_file

    component = load_component_from_file(str(path))
    return component.pipeline_spec


def parameters(name: str, settings: dict | None = None) -> dict[str, dict]:
    """The pipeline's parameters: ``{name: {"type", "default", "description"}}`` from its compiled spec."""
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = compile_pipeline(name, Path(tmp) / f"{name}.yaml", settings=settings)
        spec = next(yaml.safe_load_all(path.read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    return {key: {"type": p["parameterType"], "default": p.get("defaultValue"), "description": p.get("description")}
            for key, p in params.items()}


def parse_params(name: str, items: list[str], settings: dict | None = None) -> dict[str, Any]:
    """``key=value`` run arguments of pipeline ``name``; values are YAML (``['a=1']``, ``3``, ``true``)."""
    import yaml

    known = parameters(name, settings)
    result: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--param {item!r}: expected key=value")
        if key not in known:
            raise ConfigError(f"--param {key!r}: {name} has no such parameter; known: {', '.join(sorted(known))}")
        value = yaml.safe_load(text) if text else ""
        kind = known[key]["type"]
        expected = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": (int, float), "BOOLEAN": bool,
                    "LIST": list, "STRUCT": dict}.get(kind)
        if kind == "STRING":
            value = text
        elif expected and (not isinstance(value, expected) or (kind == "NUMBER_INTEGER" and isinstance(value, bool))):
            raise ConfigError(f"--param {key}: expected {kind.lower().replace('number_', '')}, got {text!r}")
        if kind == "NUMBER_DOUBLE" and not isinstance(value, bool):
            value = float(value)  # "2" is a double too; kfp refuses an int for a float input
        _check_value(key, value)
        result[key] = value
    return result


def _check_value(key: str, value: Any) -> None:
    """Refuse values the steps would refuse only once the run is under way."""
    from kuberlhf.workflow.steps import MODES

    if key == "mode" and value not in MODES:
        raise ConfigError(f"--param mode: must be one of {', '.join(MODES)}, got {value!r}")
    if key == "procs" and value < 1:
        raise ConfigError(f"--param procs: must be at least 1, got {value}")
