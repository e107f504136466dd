"""The monitoring tier (Prometheus, the exporters, Alertmanager; Grafana in the upstream lane).

- settings: ``govstack.settings.monitoring`` (``Settings.monitoring``)
- ``catalog``: the exporter's database role and the backup metrics (its services' images,
  ports and scrape jobs are records of the service catalog, ``govstack.catalog``)
- ``render``: every file it gets, from a StackPlan (``monitoring_files``)
- ``deploy``: the exporter's database role
- ``promtool``: promtool and amtool in the offline images, for the quick test tier
"""

# Test inventories merge this under `monitoring` (short alert durations, the test receiver).
from govstack.settings.monitoring import TEST_PROFILE, TEST_WEBHOOK_URL

__all__ = ["TEST_PROFILE", "TEST_WEBHOOK_URL"]
