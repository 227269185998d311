"""A live websocket lives only as long as the admin session that opened it.

The socket is authenticated once, by the session cookie of its handshake.
Afterwards, whatever ends that session also closes the socket (code 4401):

- logout (`user_logged_out`): a `session.end` message to the session's group,
  so only the sockets of that session close, not the user's other sessions;
- a change to the user (password, which rotates the session auth hash; deactivation;
  staff or superuser status; deletion) or to their membership (removed, moved to
  another tenant): a `session.check` message to the user's group; each socket
  of that user checks its session again against the database;
- anything without a signal (the session expired or was deleted, a bulk
  `UPDATE` of users): the consumer checks again before forwarding an event
  when its last check is older than `CHECK_SECONDS`, and every `CHECK_SECONDS`
  while idle.

The messages travel through the channel layer (Redis across processes), from
whichever process made the change, after its transaction commits.
"""

from __future__ import annotations

import hashlib
from importlib import import_module

from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
    user_logged_out,
)
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.utils.crypto import constant_time_compare

from iotcloud.live import events

SESSION_END = "session.end"
SESSION_CHECK = "session.check"
CHECK_SECONDS = 15.0


def session_group(session_key: str) -> str:
    # A digest, not the key: group names travel through (and are stored in) the channel layer.
    return "live.session." + hashlib.sha256(session_key.encode()).hexdigest()


def user_group(user_pk) -> str:
    return f"live.user.{user_pk}"


def _send_on_commit(group: str, message_type: str) -> None:
    message = {"type": message_type}
    transaction.on_commit(lambda: events._send(group, message))


def session_user(session_key: str | None):
    """The active staff user whose live session this still is (hash checked), or None.

    The same checks as django.contrib.auth.get_user, read-only, on a fresh read of the
    session store (the handshake's copy is cached): the session exists and has not expired,
    names a configured backend and a user, and its auth hash matches the user's
    (so a password change ends the other sessions).
    """
    if not session_key:
        return None
    data = import_module(settings.SESSION_ENGINE).SessionStore(session_key).load()
    backend_path = data.get(BACKEND_SESSION_KEY)
    if SESSION_KEY not in data or backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    try:
        user_id = get_user_model()._meta.pk.to_python(data[SESSION_KEY])
    except Exception:  # a session value that is not a user id: not a session of ours
        return None
    user = load_backend(backend_path).get_user(user_id)  # None when missing or inactive
    if user is None or not user.is_active or not user.is_staff:
        return None
    session_hash = data.get(HASH_SESSION_KEY) or ""
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    if not session_hash or not any(constant_time_compare(session_hash, h) for h in hashes):
        return None
    return user


def _logged_out(sender, request, user, **kwargs):
    session = getattr(request, "session", None)
    if session is not None and session.session_key:
        _send_on_commit(session_group(session.session_key), SESSION_END)


def _user_changed(sender, instance, **kwargs):
    if kwargs.get("update_fields") and set(kwargs["update_fields"]) <= {"last_login"}:
        return  # every login saves last_login: nothing a live session depends on
    _send_on_commit(user_group(instance.pk), SESSION_CHECK)


def _membership_changed(sender, instance, **kwargs):
    _send_on_commit(user_group(instance.user_id), SESSION_CHECK)


def connect_signals() -> None:
    from devices.models import Membership

    user_model = get_user_model()
    user_logged_out.connect(_logged_out, dispatch_uid="iotcloud.live.logged_out")
    post_save.connect(_user_changed, sender=user_model, dispatch_uid="iotcloud.live.user_saved")
    post_delete.connect(_user_changed, sender=user_model, dispatch_uid="iotcloud.live.user_deleted")
    post_save.connect(_membership_changed, sender=Membership, dispatch_uid="iotcloud.live.membership_saved")
    post_delete.connect(_membership_changed, sender=Membership, dispatch_uid="iotcloud.live.membership_deleted")
