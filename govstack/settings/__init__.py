"""The one typed settings model of a govstack host.

Every value a template, deploy or check needs comes from here: ``Settings``
(govstack/settings/model.py) with one module per section, built from
inventory layers and the environment by ``build_settings``
(govstack/settings/loading.py). This package is a leaf: it imports no other
govstack module, so every feature (backup, monitoring, compliance …) can
read it.
"""

from govstack.settings.analytics import ANALYTICS_TEST_PROFILE, AnalyticsSettings
from govstack.settings.app import AppSettings
from govstack.settings.backup import BackupSettings, OffsiteSettings
from govstack.settings.base import Section, SettingsError
from govstack.settings.catalog import ALL_ROLES, NGINX_UID, POSTGRES_UID, ROLES, SERVICE_UID
from govstack.settings.compliance import ComplianceSettings
from govstack.settings.cost import CostSettings
from govstack.settings.edge import EdgeSettings
from govstack.settings.engine import EngineSettings
from govstack.settings.images import ImageSettings
from govstack.settings.loading import (
    ENV_PREFIX,
    INVENTORY_KEY,
    build_settings,
    deep_merge,
    env_layer,
    settings_for_host,
)
from govstack.settings.logs import LogsSettings
from govstack.settings.model import Settings
from govstack.settings.monitoring import MonitoringSettings
from govstack.settings.network import NetworkSettings
from govstack.settings.object_store import ObjectStoreSettings
from govstack.settings.paths import StackPaths
from govstack.settings.postgres import PostgresSettings
from govstack.settings.resources import Resources
from govstack.settings.runbooks import EscalationContact, RunbookSettings

__all__ = [
    "ALL_ROLES", "ANALYTICS_TEST_PROFILE", "ENV_PREFIX", "INVENTORY_KEY", "NGINX_UID", "POSTGRES_UID", "ROLES",
    "SERVICE_UID", "AnalyticsSettings", "AppSettings", "BackupSettings", "ComplianceSettings", "CostSettings",
    "EdgeSettings", "EngineSettings", "EscalationContact", "ImageSettings", "LogsSettings", "MonitoringSettings",
    "NetworkSettings", "ObjectStoreSettings", "RunbookSettings",
    "OffsiteSettings", "PostgresSettings", "Resources", "Section", "Settings", "SettingsError", "StackPaths",
    "build_settings", "deep_merge", "env_layer", "settings_for_host",
]
