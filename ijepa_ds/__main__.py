"""`python -m ijepa_ds COMMAND ...`: the ijepa-ds command line."""

from ijepa_ds.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
