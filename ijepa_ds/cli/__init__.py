"""The `ijepa-ds` command line (`python -m ijepa_ds ...`); see `ijepa_ds.cli.main`."""
