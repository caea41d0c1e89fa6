"""The Leadpost page inside the Airflow 3 web UI: an Airflow plugin serving a FastAPI app.

:mod:`leadpost.ui.plugin` is what the ``airflow.plugins`` entry point loads (cheap to import);
:mod:`leadpost.ui.api` holds the page and its JSON API and is imported on the first request,
with :mod:`~leadpost.ui.views` (what the page shows), :mod:`~leadpost.ui.models` (its JSON
shapes), :mod:`~leadpost.ui.masking` (secrets and lead values kept out) and
:mod:`~leadpost.ui.security` (who may change state).
"""

from __future__ import annotations

__all__: list[str] = []
