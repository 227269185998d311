"""Operator accounts: username and password rules on every path, and no hint of other tenants' accounts."""

import pytest
from django.contrib.auth import get_user_model

from devices.choices import Role
from devices.services import operator_create
from iotcloud.errors import DomainError

pytestmark = pytest.mark.django_db


def refused(code, **kwargs) -> DomainError:
    with pytest.raises(DomainError) as caught:
        operator_create(**kwargs)
    assert caught.value.code == code, caught.value.message
    return caught.value


# --- passwords --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "password, fragment",
    [
        ("123", "too short"),
        ("12345678901", "entirely numeric"),
        ("password123", "too common"),
        ("carol-acme", "too similar"),
    ],
)
def test_operator_create_applies_the_password_validators(tenant, password, fragment):
    error = refused("invalid_password", username="carol-acme", tenant=tenant, password=password)
    assert fragment in error.message and any(fragment in message for message in error.extra["errors"])
    assert not get_user_model().objects.filter(username="carol-acme").exists()


def test_operator_create_with_a_good_password_or_none(tenant):
    assert operator_create(username="carol", tenant=tenant, password="s3cret-pass-word").check_password(
        "s3cret-pass-word"
    )
    tokens_only = operator_create(username="script-bot", tenant=tenant)  # fixtures and scripts: no password
    assert not tokens_only.has_usable_password()


# --- usernames --------------------------------------------------------------------------------------------

HOSTILE_USERNAMES = [
    "eve\n2026-01-01 12:00:00,000 INFO devices.services operator created root",  # forges a plain log line
    "eve\r",
    "eve\n",  # a trailing newline slips past a `$` regex
    "acme-admin\u200b",  # zero-width space: looks like acme-admin
    "acme\u2060admin",  # word joiner
    "\u202eacme-admin",  # right-to-left override
    "\u0430cme-admin",  # Cyrillic a
    "<b>boss</b>",
    "bob smith",
    "nul\x00",
    "tab\tname",
    "x" * 151,
    "",
]


@pytest.mark.parametrize("username", HOSTILE_USERNAMES)
def test_operator_usernames_are_validated(tenant, username):
    error = refused("invalid_username", username=username, tenant=tenant, password="s3cret-pass-word")
    assert "\n" not in error.message and "\u200b" not in error.message  # the message quotes it escaped
    assert get_user_model().objects.count() == 0


def test_ordinary_usernames_pass(tenant):
    for username in ["ops.bot+ci@acme", "Jane_Doe-2", "x" * 150]:
        assert operator_create(username=username, tenant=tenant).username == username


def test_fullwidth_letters_are_normalized_to_ascii(tenant):
    assert operator_create(username="\uff41lice", tenant=tenant).username == "alice"  # fullwidth a (NFKC)


def test_a_username_differing_only_in_case_is_refused(tenant):
    operator_create(username="alice", tenant=tenant)
    refused("user_exists", username="Alice", tenant=tenant)


# --- other tenants' accounts stay invisible ----------------------------------------------------------------


def test_a_taken_username_does_not_reveal_other_tenants_accounts(tenant, other_tenant):
    operator_create(username="root", tenant=None, superuser=True)
    operator_create(username="bob", tenant=other_tenant)
    operator_create(username="alice", tenant=tenant)
    root = refused("username_unavailable", username="root", tenant=tenant)
    bob = refused("username_unavailable", username="bob", tenant=tenant, role=Role.ADMIN)
    assert root.message == bob.message == "This username cannot be used; choose another one"
    assert "root" not in root.message and "globex" not in bob.message
    # Within one's own tenant it may say so.
    own = refused("user_exists", username="alice", tenant=tenant)
    assert "already exists in tenant 'acme'" in own.message


# --- a new password revokes the bearer tokens, whatever the path ---------------------------------------------


def test_set_password_on_any_path_revokes_the_operators_tokens(tenant):
    from knox.models import AuthToken

    from devices.services import operator_set_password, operator_token_create

    user = operator_create(username="carol", tenant=tenant, password="s3cret-pass-word")
    other = operator_create(username="dave", tenant=tenant)
    operator_token_create(user=user), operator_token_create(user=other)
    operator_set_password(user=user, password="An0ther-secret")
    assert not AuthToken.objects.filter(user=user).exists() and AuthToken.objects.filter(user=other).exists()
    # What Django's changepassword command, password reset and its own admin forms do.
    operator_token_create(user=user)
    user.set_password("Yet-an0ther-secret")
    user.save()
    assert not AuthToken.objects.filter(user=user).exists()
    with pytest.raises(DomainError) as caught:
        operator_set_password(user=user, password="123")
    assert caught.value.code == "invalid_password"


def test_other_saves_and_hash_upgrades_keep_the_tokens(tenant, settings):
    from django.contrib.auth.hashers import make_password
    from knox.models import AuthToken

    from devices.services import operator_token_create

    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        "django.contrib.auth.hashers.MD5PasswordHasher",
    ]
    user = operator_create(username="carol", tenant=tenant)
    get_user_model().objects.filter(pk=user.pk).update(password=make_password("s3cret-pass-word", hasher="md5"))
    user.refresh_from_db()
    operator_token_create(user=user)
    user.email = "carol@example.com"
    user.save()
    assert user.check_password("s3cret-pass-word")  # upgrades the hash to PBKDF2 and saves it
    user.refresh_from_db()
    assert user.password.startswith("pbkdf2_") and AuthToken.objects.filter(user=user).count() == 1
