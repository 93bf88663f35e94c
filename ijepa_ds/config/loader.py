"""Build a `Config` from defaults < YAML (preset or file) < dotted overrides, strictly typed.

Every key is checked against the schema: an unknown key or a value of the wrong type raises
`ConfigError` naming the full key path, with a close-match hint for misspelt keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.resources
import json
import re
import typing
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from ijepa_ds.config.schema import Config, ConfigError, iter_fields

PRESET_PACKAGE = "ijepa_ds.config.presets"


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float.

    PyYAML follows YAML 1.1, whose float pattern needs a dot: `lr: 1e-3` would load as the
    string '1e-3' and then be rejected as "not a number", which surprises everyone.
    """


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text with the safe loader (plus `1e-3` floats)."""
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


def list_presets() -> list[str]:
    """Names of the preset configs shipped in the package, sorted."""
    root = importlib.resources.files(PRESET_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def preset_summary(name: str) -> str:
    """First comment line of a preset file (its one-line description)."""
    text = importlib.resources.files(PRESET_PACKAGE).joinpath(name + ".yaml").read_text("utf-8")
    first = text.splitlines()[0] if text else ""
    return first.lstrip("# ").strip() if first.startswith("#") else ""


def read_config_source(name_or_path: str) -> dict[str, Any]:
    """The raw mapping of a preset (by name) or of a YAML file (by path)."""
    presets = list_presets()
    if name_or_path in presets:
        text = importlib.resources.files(PRESET_PACKAGE).joinpath(name_or_path + ".yaml")
        source, content = f"preset {name_or_path!r}", text.read_text(encoding="utf-8")
    elif Path(name_or_path).is_file():
        source, content = f"file {name_or_path!r}", Path(name_or_path).read_text(encoding="utf-8")
    else:
        hint = difflib.get_close_matches(name_or_path, presets, n=1)
        did_you_mean = f" Did you mean {hint[0]}?" if hint else ""
        raise ConfigError(
            f"No preset and no file named {name_or_path!r}.{did_you_mean} "
            f"Presets: {', '.join(presets)}."
        )
    try:
        data = parse_yaml(content)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _unknown_key_message(path: str) -> str:
    """'Unknown config key' plus the likeliest intended keys."""
    leaves = [f.path for f in iter_fields()]
    known = leaves + [f.name for f in dataclasses.fields(Config)]
    parent, _, leaf = path.rpartition(".")
    # Same field name in another section first (`optim.lr` -> `schedule.lr`).
    suggestions = [p for p in leaves if p.rpartition(".")[2] == leaf and p != path]
    if not suggestions:
        siblings = {p.rpartition(".")[2]: p for p in known if p.rpartition(".")[0] == parent}
        close = difflib.get_close_matches(leaf, list(siblings), n=3, cutoff=0.6)
        suggestions = [siblings[c] for c in close]
    if not suggestions:
        suggestions = difflib.get_close_matches(path, known, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(suggestions)}?" if suggestions else ""
    return f"Unknown config key {path!r}.{hint}"


def type_name(tp: Any) -> str:
    """Human name of a schema type: 'int', 'a list of 2 numbers', "one of 'a', 'b'"."""
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {type_name(args[0])}s"
        return f"a list of {len(args)} {type_name(args[0])}s"
    return {bool: "bool", int: "int", float: "number", str: "string"}[tp]


def _is_text(tp: Any) -> bool:
    return tp is str or typing.get_origin(tp) is Literal


def _coerce(path: str, value: Any, tp: Any) -> Any:
    """`value` checked against the schema type `tp` (ints are accepted for floats)."""
    if typing.get_origin(tp) is tuple:
        return _coerce_tuple(path, value, tp)
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = (
        (_is_text(tp) and isinstance(value, str))
        or (tp is bool and isinstance(value, bool))
        or (tp is int and is_num and isinstance(value, int))
        or (tp is float and is_num)
    )
    if not ok:
        got = f"{type(value).__name__} {value!r}"
        raise ConfigError(f"{path}: expected {type_name(tp)}, got {got}")
    return float(value) if tp is float else value


def _coerce_tuple(path: str, value: Any, tp: Any) -> tuple:
    args = typing.get_args(tp)
    variadic = len(args) == 2 and args[1] is Ellipsis
    if not isinstance(value, (list, tuple)) or (not variadic and len(value) != len(args)):
        got = f"{type(value).__name__} {value!r}"
        raise ConfigError(f"{path}: expected {type_name(tp)}, got {got}")
    types = [args[0]] * len(value) if variadic else list(args)
    return tuple(_coerce(f"{path}[{i}]", v, t) for i, (v, t) in enumerate(zip(value, types)))


# Renamed keys: old dotted path -> (new path, old value -> new value). YAML and overrides that
# use the old name still load, with a FutureWarning that says what to write instead.
RENAMED_KEYS: dict[str, tuple[str, dict[str, str]]] = {
    "mask.compat": ("mask.sampler", {"ijepa_ds": "step_seeded", "reference": "reference"}),
}


def _renamed(path: str, value: Any, siblings: Mapping[str, Any]) -> tuple[str, Any]:
    """(new leaf key, new value) for the deprecated key ``path`` holding ``value``."""
    new_path, values = RENAMED_KEYS[path]
    new_key = new_path.rpartition(".")[2]
    if new_key in siblings:
        raise ConfigError(f"{path} and {new_path} are both set: {path} is the old name of "
                          f"{new_path}; keep {new_path} only")  # fmt: skip
    if value not in values:
        raise ConfigError(
            f"{path}={value!r} must be one of {', '.join(map(repr, values))} ({path} is the "
            f"deprecated name of {new_path}, whose choices are "
            f"{', '.join(map(repr, values.values()))})"
        )
    warnings.warn(
        f"{path} is deprecated; write {new_path}={values[value]} instead of {path}={value}",
        FutureWarning,
        stacklevel=3,
    )
    return new_key, values[value]


def config_from_dict(data: Mapping[str, Any], cls: type = Config, prefix: str = "") -> Any:
    """A `cls` instance from a (partial) nested mapping; missing keys keep their defaults."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if path in RENAMED_KEYS:
            key, value = _renamed(path, value, data)
            path = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(_unknown_key_message(path))
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path}: expected a mapping of keys, got {value!r}")
            kwargs[key] = config_from_dict(value, tp, path + ".")
        else:
            kwargs[key] = _coerce(path, value, tp)
    return cls(**kwargs)


def _schema_type(path: str) -> Any:
    """Schema type at a dotted path (a section class or a leaf type)."""
    if path in RENAMED_KEYS:
        return str  # translated by config_from_dict, which checks the value
    tp: Any = Config
    for i, part in enumerate(path.split(".")):
        hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else {}
        if part not in hints:
            raise ConfigError(_unknown_key_message(".".join(path.split(".")[: i + 1])))
        tp = hints[part]
    return tp


def parse_override(item: str) -> tuple[str, Any]:
    """`section.key=value` -> (path, value); the value is parsed as YAML.

    For string fields the raw text is kept unless it is quoted, so `logging.run_name=2024`
    gives the string "2024".
    """
    path, sep, text = item.partition("=")
    path = path.strip()
    if not sep or not path:
        raise ConfigError(f"Override {item!r} is not of the form section.key=value")
    tp = _schema_type(path)
    try:
        value = parse_yaml(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"Override {item!r}: value is not valid YAML: {exc}") from exc
    if _is_text(tp) and not isinstance(value, str):
        value = text
    return path, value


def _merge(base: dict[str, Any], path: list[str], value: Any) -> None:
    """Set `value` at `path` inside nested dict `base`, merging mappings key by key."""
    node = base
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path[: i + 1])}: expected a mapping, got {child!r}")
        node = child
    leaf = path[-1]
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        for key, sub in value.items():
            _merge(node[leaf], [key], sub)
    else:
        node[leaf] = value


def load_config(name_or_path: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Resolve a config: dataclass defaults < preset/YAML file < dotted overrides.

    Args:
        name_or_path: a preset name (see `list_presets`), a YAML file path, or None for
            the defaults. The YAML may hold any subset of the keys.
        overrides: items like `schedule.lr=1e-3` or `data.crop_scale=[0.5,1.0]`, applied last.
    Raises:
        ConfigError (a ValueError) for unknown keys, wrong types and unknown presets/files.
    """
    raw = {} if name_or_path is None else read_config_source(name_or_path)
    for item in overrides:
        path, value = parse_override(item)
        if path in RENAMED_KEYS:  # an old name on the command line overrides the new one
            key, value = _renamed(path, value, {})
            path = f"{path.rpartition('.')[0]}.{key}"
        _merge(raw, path.split("."), value)
    return config_from_dict(raw)


class _YamlDumper(yaml.SafeDumper):
    """Block-style mappings, one-line lists: `crop_scale: [0.3, 1.0]`."""


_YamlDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, True)
)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict (tuples as lists): what YAML/JSON writers and checkpoints store."""
    return _plain(dataclasses.asdict(cfg))


def dump_yaml(cfg: Config, path: str | Path | None = None) -> str:
    """The resolved config as YAML (schema order); also written to `path` when given."""
    text = yaml.dump(config_to_dict(cfg), Dumper=_YamlDumper, sort_keys=False)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


def config_hash(cfg: Config) -> str:
    """sha256 hex digest of the canonical JSON of the config (stable across runs)."""
    canonical = json.dumps(
        config_to_dict(cfg), sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
