"""Request guards that hold for every route."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction
from django.http import JsonResponse
from django.utils.decorators import sync_and_async_middleware

from iotcloud.errors import error_body


def _nul_in_query(request) -> bool:
    return any("\x00" in key or any("\x00" in v for v in values) for key, values in request.GET.lists())


@sync_and_async_middleware
def reject_nul_in_query(get_response):
    """A NUL character in a query parameter is a 400, wherever it is used.

    No id, tag or search term of ours can contain one, and PostgreSQL refuses NUL in text
    parameters (a 500 from whichever filter, search or lookup happens to pass it on).
    """

    def refuse():
        return JsonResponse(error_body("The query string contains a NUL character (%00)", "invalid"), status=400)

    if iscoroutinefunction(get_response):

        async def middleware(request):
            return refuse() if _nul_in_query(request) else await get_response(request)

    else:

        def middleware(request):
            return refuse() if _nul_in_query(request) else get_response(request)

    return middleware
