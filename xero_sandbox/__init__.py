"""A faithful local stand-in for Xero (identity, connections, accounting API, limits, faults, webhooks).

from xero_sandbox import SandboxConfig, SandboxServer
with SandboxServer(SandboxConfig(seed=42, tenants=2, invoices_per_tenant=50)) as sb:
    sb.url, sb.tenants, sb.truth(sb.tenants[0].tenant_id, "Invoices")
"""

from .config import FaultConfig, LimitConfig, SandboxConfig, UserConfig
from .core import Sandbox
from .data import TenantInfo
from .faults import FaultRule
from .server import SandboxServer, build_app
from .webhooks import sign as sign_webhook

__all__ = [
    "FaultConfig",
    "FaultRule",
    "LimitConfig",
    "Sandbox",
    "SandboxConfig",
    "SandboxServer",
    "TenantInfo",
    "UserConfig",
    "build_app",
    "sign_webhook",
]
