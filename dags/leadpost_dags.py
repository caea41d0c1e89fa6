"""Airflow DAG file of leadpost: one DAG per trigger in triggers.yaml (``$LEADPOST_TRIGGERS``),
plus the manual ``leadpost_test_action`` DAG. Config and wiring only; see leadpost.dag_factory."""

from __future__ import annotations

from leadpost.dag_factory import build_dags

globals().update(build_dags())
