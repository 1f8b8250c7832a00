"""A stateful local double of the Lago REST API v1 (see README.md beside this file)."""

from tests.lago_sandbox.server import Sandbox

__all__ = ["Sandbox"]
