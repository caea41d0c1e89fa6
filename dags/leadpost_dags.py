"""leadpost: one DAG per trigger in triggers.yaml (``$LEADPOST_TRIGGERS``), plus leadpost_test_action."""

from __future__ import annotations

from leadpost.dag_factory import build_dags

globals().update(build_dags())
