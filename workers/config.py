"""Configuration: read once in an entry point and passed down.

Sources, later wins: built-in defaults, the YAML file (``OMS_CONFIG`` or ``./temporal-dev.yaml`` if
present), then environment variables. Nothing here runs at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field

DEFAULT_SEARCH_ATTRIBUTES = {
    "CustomerId": "Keyword",
    "PlanId": "Keyword",
    "SubscriptionStatus": "Keyword",
    "NextBillingAt": "Datetime",
    "DunningStage": "Keyword",
    "PendingApproval": "Bool",
    "NeedsAttention": "Bool",
    "TestClockId": "Keyword",
    "TenantId": "Keyword",
}


class TemporalConfig(BaseModel):
    address: str = "127.0.0.1:7233"
    namespace: str = "default"
    task_queue: str = "oms"
    ui_port: int = 8233
    db_filename: str = ".oms/temporal.db"
    search_attributes: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_SEARCH_ATTRIBUTES)
    )
    # Test clocks (starter/clock.py): per-workflow time skipping on the dev server. Never in
    # production: off unless the deployment turns it on (temporal-dev.yaml does, for `make dev`).
    test_clocks: bool = False
    # A real cluster: TLS (server CA), mTLS (client certificate and key) and/or an API key
    # (Temporal Cloud). Paths to PEM files; none of them has a default.
    tls: bool = False
    tls_server_ca_cert: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    tls_server_name: str | None = None
    api_key: str | None = None


class DatabaseConfig(BaseModel):
    url: str = "sqlite:///.oms/oms.db"


class GatewayConfig(BaseModel):
    api_base: str | None = None
    api_key: str | None = None
    localstripe_port: int = 8420
    localstripe_state: str = ".oms/localstripe.pickle"


class ApiConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000


class AuthConfig(BaseModel):
    """Credentials (starter/auth.py, docs/access.md).

    ``environment`` is ``dev`` or ``production``. Signing keys are ``{key id: secret}``; tokens
    are signed with ``active_key`` and verified with any listed key (rotation: add the new key,
    make it active, drop the old one after ``token_ttl_s``). Production refuses to start without
    a key of its own; the dev key exists only in temporal-dev.yaml.
    """

    environment: str = "production"
    signing_keys: dict[str, str] = Field(default_factory=dict)
    active_key: str | None = None
    token_ttl_s: int = 3600
    issuer: str = "subscription-oms"
    # The principal the CLI acts as on a dev stack when no token is given (a dev operator).
    dev_principal: str = "dev-operator"
    # Requests per minute per principal and per client IP (the `limits` library); storage is
    # memory:// (one process) or redis://host:port for several API processes.
    rate_limit_principal: str = "600/minute"
    rate_limit_ip: str = "1200/minute"
    rate_limit_storage: str = "memory://"
    max_body_bytes: int = 1_048_576


class NotificationsConfig(BaseModel):
    """Delivery of the outbox (activities/notify, docs/notifications.md)."""

    smtp_url: str = (
        "smtp://127.0.0.1:8025"  # smtp://[user:pass@]host:port[?starttls=true], smtps://
    )
    from_address: str = "Subscription OMS <billing@oms.localhost>"
    message_id_domain: str = "oms.localhost"
    ops_address: str = "ops@oms.localhost"  # ops_attention / ops_collections notices
    portal_url: str = "http://127.0.0.1:8000/portal"  # links in e-mails
    poll_s: float = 1.0
    batch: int = 50
    lease_s: int = 120
    max_email_attempts: int = 8
    # The dev stack's SMTP sink (starter/mailsink.py): where it listens and keeps messages.
    sink_port: int = 8025
    mail_dir: str = ".oms/mail"


class BillingConfig(BaseModel):
    upcoming_notice_days: int = 3
    # Longer lead times for longer intervals (automatic-renewal laws: 15 to 45 days before a
    # yearly renewal); intervals not listed use upcoming_notice_days.
    notice_days_by_interval: dict[str, int] = Field(
        default_factory=lambda: {"quarterly": 14, "semiannual": 30, "yearly": 30}
    )
    default_timezone: str = "UTC"


class EnrollmentConfig(BaseModel):
    """Sign-ups (docs/enrollment.md).

    ``secret`` keys the hashes of one-time codes, enrollment tokens and addresses (HMAC-SHA256);
    the API and the worker must share it. A dev stack without one uses a public dev secret;
    anywhere else :func:`enrollment_secret` refuses to run without 32 bytes of its own.
    """

    secret: str | None = None
    tenant_id: str = "default"  # the merchant tenant public sign-ups enroll with
    resume_url: str = "http://127.0.0.1:8000/portal/enroll"  # reminder e-mails link here


class Config(BaseModel):
    temporal: TemporalConfig = Field(default_factory=TemporalConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    billing: BillingConfig = Field(default_factory=BillingConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    enrollment: EnrollmentConfig = Field(default_factory=EnrollmentConfig)


# env var -> (section, key)
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "OMS_TEMPORAL_ADDRESS": ("temporal", "address"),
    "OMS_TEMPORAL_NAMESPACE": ("temporal", "namespace"),
    "OMS_TASK_QUEUE": ("temporal", "task_queue"),
    "OMS_TEMPORAL_UI_PORT": ("temporal", "ui_port"),
    "OMS_TEMPORAL_DB": ("temporal", "db_filename"),
    "OMS_TEST_CLOCKS": ("temporal", "test_clocks"),
    "OMS_DATABASE_URL": ("database", "url"),
    "OMS_STRIPE_API_BASE": ("gateway", "api_base"),
    "OMS_STRIPE_API_KEY": ("gateway", "api_key"),
    "OMS_LOCALSTRIPE_PORT": ("gateway", "localstripe_port"),
    "OMS_LOCALSTRIPE_STATE": ("gateway", "localstripe_state"),
    "OMS_API_HOST": ("api", "host"),
    "OMS_API_PORT": ("api", "port"),
    "OMS_UPCOMING_NOTICE_DAYS": ("billing", "upcoming_notice_days"),
    "OMS_DEFAULT_TIMEZONE": ("billing", "default_timezone"),
    "OMS_TEMPORAL_TLS": ("temporal", "tls"),
    "OMS_TEMPORAL_TLS_SERVER_CA_CERT": ("temporal", "tls_server_ca_cert"),
    "OMS_TEMPORAL_TLS_CLIENT_CERT": ("temporal", "tls_client_cert"),
    "OMS_TEMPORAL_TLS_CLIENT_KEY": ("temporal", "tls_client_key"),
    "OMS_TEMPORAL_TLS_SERVER_NAME": ("temporal", "tls_server_name"),
    "OMS_TEMPORAL_API_KEY": ("temporal", "api_key"),
    "OMS_ENV": ("auth", "environment"),
    "OMS_AUTH_ACTIVE_KEY": ("auth", "active_key"),
    "OMS_TOKEN_TTL_S": ("auth", "token_ttl_s"),
    "OMS_RATE_LIMIT_PRINCIPAL": ("auth", "rate_limit_principal"),
    "OMS_RATE_LIMIT_IP": ("auth", "rate_limit_ip"),
    "OMS_RATE_LIMIT_STORAGE": ("auth", "rate_limit_storage"),
    "OMS_MAX_BODY_BYTES": ("auth", "max_body_bytes"),
    "OMS_SMTP_URL": ("notifications", "smtp_url"),
    "OMS_MAIL_FROM": ("notifications", "from_address"),
    "OMS_OPS_EMAIL": ("notifications", "ops_address"),
    "OMS_PORTAL_URL": ("notifications", "portal_url"),
    "OMS_MAIL_SINK_PORT": ("notifications", "sink_port"),
    "OMS_MAIL_DIR": ("notifications", "mail_dir"),
    "OMS_ENROLLMENT_SECRET": ("enrollment", "secret"),
    "OMS_ENROLLMENT_TENANT": ("enrollment", "tenant_id"),
    "OMS_ENROLLMENT_RESUME_URL": ("enrollment", "resume_url"),
}

DEV_ENROLLMENT_SECRET = "oms-dev-enrollment-secret-public-never-use-in-production"
MIN_ENROLLMENT_SECRET_BYTES = 32


def enrollment_secret(config: Config) -> bytes:
    """The key of enrollment's keyed hashes: the configured secret; the public dev secret on a
    dev stack without one. Raises ``SystemExit`` naming the variable otherwise."""
    secret = config.enrollment.secret or ""
    if not secret and config.auth.environment == "dev":
        secret = DEV_ENROLLMENT_SECRET
    if len(secret.encode()) < MIN_ENROLLMENT_SECRET_BYTES or (
        secret == DEV_ENROLLMENT_SECRET and config.auth.environment != "dev"
    ):
        raise SystemExit(
            "error CONFIG_INVALID: set OMS_ENROLLMENT_SECRET to at least "
            f"{MIN_ENROLLMENT_SECRET_BYTES} random bytes (shared by the API and the worker)"
        )
    return secret.encode()


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from file and environment.

    Args:
        path: YAML file; defaults to ``$OMS_CONFIG`` or ``./temporal-dev.yaml`` when it exists.
        env: the environment to read (defaults to ``os.environ``).
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    candidate = path or env.get("OMS_CONFIG")
    if candidate is None and Path("temporal-dev.yaml").exists():
        candidate = "temporal-dev.yaml"
    if candidate is not None:
        loaded = yaml.safe_load(Path(candidate).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {candidate} must hold a mapping")
        data = loaded
    for var, (section, key) in ENV_OVERRIDES.items():
        if var in env:
            value = env[var]
            data.setdefault(section, {})[key] = None if value == "" else value
    # OMS_AUTH_SIGNING_KEYS="kid1:secret1,kid2:secret2" replaces the file's keys (never merged:
    # production must not keep verifying with the dev key).
    if env.get("OMS_AUTH_SIGNING_KEYS"):
        keys: dict[str, str] = {}
        for item in env["OMS_AUTH_SIGNING_KEYS"].split(","):
            kid, sep, secret = item.strip().partition(":")
            if not sep or not kid or not secret:
                raise ValueError("OMS_AUTH_SIGNING_KEYS must be kid:secret[,kid:secret...]")
            keys[kid] = secret
        data.setdefault("auth", {})["signing_keys"] = keys
    return Config.model_validate(data)
