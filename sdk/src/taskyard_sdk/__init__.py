"""Taskyard SDK: define tasks and workflows, run workers, trigger work.

Worker-only deployments install this package alone; it never imports the engine.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
