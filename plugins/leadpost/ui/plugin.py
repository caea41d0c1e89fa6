"""The ``leadpost`` Airflow plugin: the Leadpost page under Browse in the Airflow 3 web UI.

Registered only through the ``airflow.plugins`` entry point (listing it in the provider info as
well would load it twice). Every Airflow process discovers plugins — scheduler, workers, the CLI —
but only the api-server serves pages, so importing this module stays cheap: the FastAPI app of
:mod:`leadpost.ui.api` is built on the first request it receives, not at import.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from airflow.plugins_manager import AirflowPlugin

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from fastapi import FastAPI

    Scope = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
    Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

__all__ = ["URL_PREFIX", "LazyApp", "LeadpostPlugin"]

URL_PREFIX = "/leadpost"


class LazyApp:
    """An ASGI app that builds the real one on its first request.

    :param factory: ``module:function`` returning the FastAPI app.
    """

    def __init__(self, factory: str) -> None:
        self.factory = factory
        self._app: FastAPI | None = None
        self._lock = threading.Lock()

    @property
    def app(self) -> FastAPI:
        """The FastAPI app, built once (thread-safe)."""
        if self._app is None:
            with self._lock:
                if self._app is None:
                    import importlib

                    module, _, func = self.factory.partition(":")
                    self._app = getattr(importlib.import_module(module), func)()
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app
        if app is None:
            import anyio

            # the first build imports the API modules: keep that off the server's event loop
            app = await anyio.to_thread.run_sync(lambda: self.app)
        await app(scope, receive, send)

    def __repr__(self) -> str:
        return f"LazyApp({self.factory!r}, built={self._app is not None})"


class LeadpostPlugin(AirflowPlugin):
    """Triggers, actions, their status and test execution, in the Airflow UI (Browse → Leadpost)."""

    name = "leadpost"
    fastapi_apps = [
        {"app": LazyApp("leadpost.ui.api:create_app"), "url_prefix": URL_PREFIX, "name": "Leadpost"}
    ]
    external_views = [
        {
            "name": "Leadpost",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "leadpost",
        }
    ]
