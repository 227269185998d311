"""A live websocket (/ws/live) closes when the session that opened it ends (iotcloud.live.sessions).

Each scenario opens a socket with a real admin session, ends the session one
way or another, then makes a change the tenant's subscribers would hear of:
the socket must have been closed with 4401 and must not receive it.
"""

import asyncio
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.contrib.sessions.models import Session
from django.utils import timezone

from devices.choices import Role
from devices.models import Membership
from devices.services import device_provision
from iotcloud.live import sessions
from iotcloud.live.consumers import LiveConsumer
from iotcloud.testing import make_operator_client, subprocess_database_url
from iotcloud.tests.live_helpers import connect, logged_in, next_event, run, staff, subscribe

pytestmark = pytest.mark.django_db(transaction=True)  # the consumer reads the database from its own thread

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-123456789"  # live_helpers.staff's
ENDED = "Session ended: sign in again"


@pytest.fixture
def writer(tenant):
    device_provision(tenant=tenant, device_id="pump-1")
    return make_operator_client(tenant, "writer")


async def change(writer, n=1):
    await sync_to_async(writer.patch)("/customer/devices/pump-1/twin/desired", {"desired": {"n": n}}, expect=200)


async def open_socket(user, tenants="acme"):
    client, headers = await sync_to_async(logged_in)(user)
    communicator, connected, _ = await connect(headers)
    assert connected
    assert (await subscribe(communicator, tenants))["type"] == "subscribed"
    return client, communicator


async def assert_closed_for_good(communicator, writer, code=4401):
    """Told why, closed with `code`, and deaf to the tenant's events from then on."""
    detail = ENDED if code == 4401 else "You may no longer watch these tenants"
    assert await communicator.receive_json_from(timeout=5) == {"type": "error", "detail": detail}
    assert await communicator.receive_output(timeout=5) == {"type": "websocket.close", "code": code}
    await change(writer, n=99)
    assert await communicator.receive_nothing(timeout=0.3)


def test_logout_closes_the_socket_and_no_event_follows(tenant, writer):
    user = staff(tenant, "watcher")

    async def scenario():
        client, communicator = await open_socket(user)
        await change(writer)
        assert (await next_event(communicator, "twin.changed"))["devices"] == ["pump-1"]
        response = await sync_to_async(client.post)("/admin/logout/")
        assert response.status_code == 200
        await assert_closed_for_good(communicator, writer)
        await communicator.disconnect()

    run(scenario)


def test_logout_of_one_session_leaves_the_users_other_sessions_open(tenant, writer):
    user = staff(tenant, "watcher")

    async def scenario():
        first_client, first = await open_socket(user)
        _, second = await open_socket(user)
        await sync_to_async(first_client.post)("/admin/logout/")
        await assert_closed_for_good(first, writer)  # makes a change...
        assert (await next_event(second, "twin.changed"))["devices"] == ["pump-1"]  # ...the other session hears
        await change(writer, n=2)
        assert (await next_event(second, "twin.changed"))["devices"] == ["pump-1"]
        await first.disconnect()
        await second.disconnect()

    run(scenario)


def test_changing_the_password_in_admin_closes_every_socket_of_the_user(tenant, writer):
    user = staff(tenant, "watcher")

    async def scenario():
        client, here = await open_socket(user)
        _, elsewhere = await open_socket(user)
        new = "a-new-pw-987654321"
        body = {"old_password": PASSWORD, "new_password1": new, "new_password2": new}
        response = await sync_to_async(client.post)("/admin/password_change/", body)
        assert response.status_code == 302, response.content[:500]
        await assert_closed_for_good(elsewhere, writer)  # the session auth hash changed
        await assert_closed_for_good(here, writer)  # Django cycled this session's key
        await here.disconnect()
        await elsewhere.disconnect()

    run(scenario)


def set_password(user):
    user.set_password("set-by-an-admin-123456")
    user.save()


def deactivate(user):
    user.is_active = False
    user.save()


def remove_staff(user):
    user.is_staff = False
    user.save()


def delete_user(user):
    user.delete()


def remove_membership(user):
    Membership.objects.filter(user=user).delete()


def move_to_other_tenant(user):
    from devices.services import tenant_create

    Membership.objects.filter(user=user).update(tenant=tenant_create(tenant_id="globex", name="Globex"))
    Membership.objects.get(user=user).save()  # what admin's change form does: post_save


@pytest.mark.parametrize(
    ("end", "code"),
    [
        (set_password, 4401),
        (deactivate, 4401),
        (remove_staff, 4401),
        (delete_user, 4401),
        (remove_membership, 4401),
        (move_to_other_tenant, 4403),
    ],
)
def test_changes_to_the_user_or_membership_close_the_socket_at_once(tenant, writer, end, code):
    user = staff(tenant, "watcher", role=Role.VIEWER)

    async def scenario():
        _, communicator = await open_socket(user)
        await sync_to_async(end)(user)
        await assert_closed_for_good(communicator, writer, code=code)
        await communicator.disconnect()

    run(scenario)


def delete_session(user):
    Session.objects.all().delete()


def expire_session(user):
    Session.objects.update(expire_date=timezone.now() - timedelta(seconds=1))


def deactivate_without_signal(user):
    type(user).objects.filter(pk=user.pk).update(is_active=False)


def rotate_hash_without_signal(user):
    type(user).objects.filter(pk=user.pk).update(password="pbkdf2_sha256$1$x$y")


SILENT_ENDS = [delete_session, expire_session, deactivate_without_signal, rotate_hash_without_signal]


async def idle(self):
    pass


@pytest.mark.parametrize("end", SILENT_ENDS)
def test_an_event_after_a_silent_end_closes_the_socket_instead(tenant, writer, end, monkeypatch):
    """No signal (session expired or deleted, bulk UPDATE): the next event past CHECK_SECONDS checks again."""
    user = staff(tenant, "watcher")
    monkeypatch.setattr(sessions, "CHECK_SECONDS", 0.05)  # the periodic check would also close it, but later:
    monkeypatch.setattr(LiveConsumer, "_watch_session", idle)  # here only the check before forwarding may

    async def scenario():
        _, communicator = await open_socket(user)
        await sync_to_async(end)(user)
        await asyncio.sleep(0.1)  # the last check (subscribing) is now older than CHECK_SECONDS
        await change(writer)  # forwarded only if the session were still alive
        await assert_closed_for_good(communicator, writer)
        await communicator.disconnect()

    run(scenario)


@pytest.mark.parametrize("end", SILENT_ENDS)
def test_an_idle_socket_is_closed_by_the_periodic_check(tenant, writer, end, monkeypatch):
    user = staff(tenant, "watcher")
    monkeypatch.setattr(sessions, "CHECK_SECONDS", 0.2)

    async def scenario():
        _, communicator = await open_socket(user)
        await sync_to_async(end)(user)
        await assert_closed_for_good(communicator, writer)
        await communicator.disconnect()

    run(scenario)


def test_a_live_session_stays_open_through_checks_and_logins_elsewhere(tenant, writer, monkeypatch):
    user = staff(tenant, "watcher")
    monkeypatch.setattr(sessions, "CHECK_SECONDS", 0.05)

    async def scenario():
        _, communicator = await open_socket(user)
        await sync_to_async(logged_in)(user)  # another login of the same user (saves last_login)
        for n in range(3):
            await change(writer, n=n)
            assert (await next_event(communicator, "twin.changed"))["devices"] == ["pump-1"]
        assert (await subscribe(communicator, "acme"))["type"] == "subscribed"
        await communicator.disconnect()

    run(scenario)


def test_a_subscription_after_the_session_ended_is_refused(tenant, writer):
    user = staff(tenant, "watcher")

    async def scenario():
        _client, headers = await sync_to_async(logged_in)(user)
        communicator, connected, _ = await connect(headers)
        assert connected
        await sync_to_async(Session.objects.all().delete)()
        await communicator.send_json_to({"subscribe": "acme"})
        await assert_closed_for_good(communicator, writer)
        await communicator.disconnect()

    run(scenario)


def test_session_groups_do_not_carry_the_session_key():
    key = "abcdefghijklmnopqrstuvwxyz012345"
    assert key not in sessions.session_group(key) and len(sessions.session_group(key)) < 100


@pytest.mark.skipif(
    not os.environ.get("REDIS_URL"), reason="needs REDIS_URL (the close crosses processes through Redis)"
)
def test_a_password_change_in_another_process_closes_the_socket_through_redis(tenant, writer):
    """Production's shape: the password changes in a web worker, the socket lives in a daphne process."""
    user = staff(tenant, "watcher")
    change_password = (
        "from django.contrib.auth import get_user_model; "
        "u = get_user_model().objects.get(username='watcher'); u.set_password('other-pw-123456'); u.save()"
    )

    def in_another_process():
        env = {**os.environ, "DATABASE_URL": subprocess_database_url()}
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", change_password], cwd=ROOT, env=env, check=True, timeout=60
        )

    async def scenario():
        _, communicator = await open_socket(user)
        await sync_to_async(in_another_process)()
        await assert_closed_for_good(communicator, writer)
        await communicator.disconnect()

    run(scenario)
