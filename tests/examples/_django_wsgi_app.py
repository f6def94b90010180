"""A Django project under WSGI (gunicorn, gthread) for ``test_django_wsgi``: the watch view
(async, run by the WSGI handler), a watchable sync view, a sync view that publishes, and
``/metrics``. ``python -m tests.examples._django_wsgi_app
--heartbeat S`` prints ``ready http://HOST:PORT`` once the worker serves."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from types import ModuleType
from typing import Any

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from watchroutes import Hub
from watchroutes.adapters.django import post_worker_init, watch_view, watchable, worker_int
from watchroutes.prometheus import PrometheusMetrics


def create(heartbeat: float) -> tuple[Any, Hub]:
    hub = Hub(heartbeat=heartbeat, metrics=PrometheusMetrics(), max_watches=12)
    orders = hub.resource("orders", kind="Order")

    @watchable(orders)
    def sync_view(request: HttpRequest) -> HttpResponse:  # a sync view: its own plain answer
        return JsonResponse({"own": True})

    def publish(request: HttpRequest) -> HttpResponse:  # a sync view that writes
        return JsonResponse(orders.create(json.loads(request.body)), status=201)

    def metrics(request: HttpRequest) -> HttpResponse:
        assert isinstance(hub.metrics, PrometheusMetrics)
        return HttpResponse(hub.metrics.exposition(), content_type="text/plain")

    urls = ModuleType("wsgi_urls")
    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("orders", watch_view(orders)),  # an async view, run by Django's WSGI handler
        path("sync", sync_view),
        path("publish", publish),
        path("metrics", metrics),
    ]
    settings.configure(
        SECRET_KEY="test",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=urls,
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        DATABASES={},
    )
    django.setup()
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application(), hub


def main() -> None:
    from gunicorn.app.base import BaseApplication

    parser = argparse.ArgumentParser()
    parser.add_argument("--heartbeat", type=float, default=30.0)
    application, _ = create(parser.parse_args().heartbeat)

    def ready(worker: Any) -> None:
        post_worker_init(worker)
        host, port = worker.sockets[0].getsockname()[:2]
        print(f"ready http://{host}:{port}", flush=True)

    options = {
        "bind": "127.0.0.1:0",
        "workers": 1,
        "worker_class": "gthread",
        "threads": 16,
        "graceful_timeout": 8,
        "post_worker_init": ready,
        "worker_int": worker_int,
        "accesslog": None,
        "loglevel": "warning",
    }

    class App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for name, value in options.items():
                self.cfg.set(name, value)

        def load(self) -> Any:
            return application

    logging.basicConfig(level=logging.INFO)
    App().run()
    sys.exit(0)


if __name__ == "__main__":
    main()
