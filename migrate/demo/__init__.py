"""The embedded end-to-end demo: a synthetic EPR estate migrated on SQLite and local folders."""

from migrate.demo.flow import DemoResult, run_demo

__all__ = ["DemoResult", "run_demo"]
