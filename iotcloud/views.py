"""Project-level endpoints: health probes, metrics and JSON error pages (logic in iotcloud.health/.metrics)."""

import hmac

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.utils.cache import patch_vary_headers
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_safe
from prometheus_client import CONTENT_TYPE_LATEST

from iotcloud import health, metrics
from iotcloud.errors import error_body


@require_safe  # GET or HEAD: some load balancers probe with HEAD
def live(request):
    """Liveness: the process answers. No database (also the benchmark's baseline view)."""
    return JsonResponse({"status": "ok"})


# How much operational detail a request may see (see operational_access).
FULL, PUBLIC, NONE = "full", "public", "none"


def operational_access(request) -> str:
    """FULL with `Authorization: Bearer <METRICS_TOKEN>` (or DEBUG without a token: make run's convenience);
    PUBLIC when METRICS_PUBLIC serves /metrics without a token (bridge client ids pseudonymised); else NONE.

    /readyz answers everyone, with its full detail only for FULL; /metrics answers FULL and PUBLIC, else 401.
    """
    token = settings.METRICS_TOKEN
    if token:
        return FULL if _bearer_matches(request, token) else NONE
    if settings.METRICS_DEBUG_OPEN:
        return FULL
    return PUBLIC if settings.METRICS_PUBLIC else NONE


@never_cache
@require_safe
def ready(request):
    """Readiness: database, broker, bridge heartbeat, delivery backlog; 503 naming what failed.

    Without the metrics token only the verdict and the names of failed checks: the reasons carry
    bridge client ids, the broker's address and fleet figures.
    """
    result = health.readiness()
    body = result.as_dict() if operational_access(request) == FULL else result.summary()
    response = JsonResponse(body, status=200 if result.ready else 503)
    patch_vary_headers(response, ["Authorization"])
    # Django would log every failing probe at ERROR; health logs the change of state once instead.
    response._has_been_logged = True
    return response


@never_cache
@require_GET
def prometheus_metrics(request):
    """Prometheus exposition: for `Authorization: Bearer <METRICS_TOKEN>`, or open with METRICS_PUBLIC (or DEBUG)."""
    access = operational_access(request)
    if access == NONE:
        response = JsonResponse(error_body("Missing or invalid metrics token", "not_authenticated"), status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(metrics.render(client_ids=access == FULL), content_type=CONTENT_TYPE_LATEST)


def _bearer_matches(request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def not_found(request, exception=None):
    """API clients get JSON, not an HTML page, for an unknown route."""
    return JsonResponse(error_body(f"No route for {request.method} {request.path}", "no_route"), status=404)


def server_error(request):
    return JsonResponse(error_body("Internal server error", "server_error"), status=500)
