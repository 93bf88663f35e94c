"""Preset run configs (YAML), read through importlib.resources by `ijepa_ds.config.loader`."""
