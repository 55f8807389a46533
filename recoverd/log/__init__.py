"""The maintenance log: an append-only, hash-chained record of every run."""

from recoverd.log.maintenance import MaintenanceLog, RunFilter

__all__ = ["MaintenanceLog", "RunFilter"]
