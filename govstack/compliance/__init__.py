"""Compliance jobs and operator reports (audit retention, access review,
residency, storage, privacy, counts).

- settings: ``govstack.settings.compliance`` (``Settings.compliance``)
- ``ops``: the jobs and reports, as functions of a ComplianceHost
- ``cli``: the commands (``python -m govstack.compliance`` runs them alone)
"""
