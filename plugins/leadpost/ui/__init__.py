"""The Leadpost page inside the Airflow 3 web UI: an Airflow plugin serving a FastAPI app.

:mod:`leadpost.ui.plugin` is what the ``airflow.plugins`` entry point loads (cheap to import);
:mod:`leadpost.ui.api` holds the page and its JSON API and is imported on the first request.
"""

from __future__ import annotations

__all__: list[str] = []
