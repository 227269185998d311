"""Helpers for tests of the operator websocket: a session-authenticated WebsocketCommunicator and friends."""

from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from devices.services import operator_create
from iotcloud.asgi import application


def session_headers(user):
    return logged_in(user)[1]


def logged_in(user):
    """A test Client signed in as user (a session of its own) and the websocket headers of that session."""
    client = Client()
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    return client, [(b"cookie", cookie.encode()), (b"origin", b"http://testserver"), (b"host", b"testserver")]


def staff(tenant, username, **kwargs):
    return operator_create(username=username, tenant=tenant, password="pw-123456789", **kwargs)


async def connect(headers):
    communicator = WebsocketCommunicator(application, "/ws/live", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


async def subscribe(communicator, tenants):
    await communicator.send_json_to({"subscribe": tenants})
    return await communicator.receive_json_from(timeout=5)


async def next_event(communicator, type_, timeout=5):
    """The next event of this type (others, e.g. last_seen updates, may come first)."""
    while True:
        event = await communicator.receive_json_from(timeout=timeout)
        if event["type"] == type_:
            return event


def run(coroutine_function):
    return async_to_sync(coroutine_function)()
