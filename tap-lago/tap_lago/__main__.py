"""Run the tap with ``python -m tap_lago``."""

from tap_lago.tap import TapLago

TapLago.cli()
