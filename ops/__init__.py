"""The operator's command-line tool, `polar-billing` (ops/cli.py)."""
