"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

__all__ = ["AUTH_MODES", "get_provider_info"]

AUTH_MODES = ("basic", "header", "query", "bearer", "hmac")


def get_provider_info() -> dict[str, Any]:
    from leadpost import __version__

    return {
        "package-name": "leadpost",
        "name": "Leadpost",
        "description": "Smart triggers for Airflow: send leads to any HTTP endpoint (HttpPost action), "
        "with field mapping, authentication and test-gated activation.",
        "versions": [__version__],
        "connection-types": [
            {
                "connection-type": "leadpost",
                "hook-class-name": "leadpost.hook.LeadPostHook",
                "hook-name": "Leadpost HttpPost authentication",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {"login": "Key", "password": "Value", "host": "Allowed host (optional)"},
                    "placeholders": {
                        "login": "key, e.g. X-Api-Key or a username",
                        "password": "value: password, token or whsec_… signing secret",
                        "host": "leave empty, or the host the action URL must point at",
                    },
                },
                "conn-fields": {
                    "auth_mode": {
                        "label": "Auth mode",
                        "description": "basic: HTTP Basic key:value · header: header <key>: <value> · "
                        "query: parameter <key>=<value> · bearer: Authorization: Bearer <value> · "
                        "hmac: Standard Webhooks signature with the whsec_ secret in Value",
                        "schema": {
                            "type": ["string", "null"],
                            "default": "basic",
                            "enum": list(AUTH_MODES),
                        },
                    },
                    "ca_bundle": {
                        "label": "CA bundle path",
                        "description": "Optional path to a PEM file of CAs to trust for this endpoint's TLS.",
                        "schema": {"type": ["string", "null"]},
                    },
                },
            }
        ],
        "config": {
            "leadpost": {
                "description": "Settings of the leadpost provider.",
                "options": {
                    "allowed_networks": {
                        "description": "Comma-separated CIDRs that actions may reach even though they are "
                        "private, loopback or link-local (e.g. 10.0.0.0/8 for an internal CRM). "
                        "Everything else that resolves to such an address is refused.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "10.1.2.0/24,127.0.0.1/32",
                        "default": "",
                    },
                    "triggers_file": {
                        "description": "Path of the triggers YAML; LEADPOST_TRIGGERS overrides it.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/opt/airflow/dags/triggers.yaml",
                        "default": None,
                    },
                },
            }
        },
    }
