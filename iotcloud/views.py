"""Project-level endpoints: health probes, metrics and JSON error pages (logic in iotcloud.health/.metrics)."""

import hmac

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_safe
from prometheus_client import CONTENT_TYPE_LATEST

from iotcloud import health, metrics


@require_safe  # GET or HEAD: some load balancers probe with HEAD
def live(request):
    """Liveness: the process answers. No database (also the benchmark's baseline view)."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
def ready(request):
    """Readiness: database, broker, bridge heartbeat, delivery backlog; 503 naming what failed."""
    result = health.readiness()
    response = JsonResponse(result.as_dict(), status=200 if result.ready else 503)
    # Django would log every failing probe at ERROR; health logs the change of state once instead.
    response._has_been_logged = True
    return response


@never_cache
@require_GET
def prometheus_metrics(request):
    """Prometheus exposition; with METRICS_TOKEN set, only for `Authorization: Bearer <METRICS_TOKEN>`."""
    token = settings.METRICS_TOKEN
    if token and not _bearer_matches(request, token):
        response = JsonResponse({"detail": "Missing or invalid metrics token", "code": "not_authenticated"}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(metrics.render(), content_type=CONTENT_TYPE_LATEST)


def _bearer_matches(request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def not_found(request, exception=None):
    """API clients get JSON, not an HTML page, for an unknown route."""
    return JsonResponse({"detail": f"No route for {request.method} {request.path}", "code": "no_route"}, status=404)


def server_error(request):
    return JsonResponse({"detail": "Internal server error", "code": "server_error"}, status=500)
