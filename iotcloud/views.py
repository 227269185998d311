"""Project-level endpoints: health probes and JSON error pages."""

from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET


@require_GET
def live(request):
    """Liveness: the process answers. No database (also the benchmark's baseline view)."""
    return JsonResponse({"status": "ok"})


@require_GET
def ready(request):
    """Readiness: the database answers."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any driver error means "not ready", with the reason
        return JsonResponse({"status": "unavailable", "database": str(exc)}, status=503)
    return JsonResponse({"status": "ok", "database": connection.vendor})


def not_found(request, exception=None):
    """API clients get JSON, not an HTML page, for an unknown route."""
    return JsonResponse({"detail": f"No route for {request.method} {request.path}", "code": "no_route"}, status=404)


def server_error(request):
    return JsonResponse({"detail": "Internal server error", "code": "server_error"}, status=500)
