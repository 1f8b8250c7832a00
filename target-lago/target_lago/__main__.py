"""Run target-lago with `python -m target_lago`."""

from target_lago.target import TargetLago

TargetLago.cli()
