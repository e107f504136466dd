"""Reconciliation after a restore: the cleanup pause, the reconciliation report, adopting objects
back, the quarantine report.

- ``ops``: the pause flag's SQL, the report (collected, merged, rendered, written), as functions
  of a StackHost
- ``cli``: `govstack cleanup …`, `govstack reconcile …`, `govstack report quarantine`
"""
