"""Every admin of the site (also auth's and knox's) filters only by what it declares, and never by a secret."""

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse
from knox.models import AuthToken

from devices.services import operator_create, operator_token_create
from iotcloud.admin_filters import DeclaredFiltersOnly, is_secret

pytestmark = pytest.mark.django_db

TOKENS = reverse("admin:knox_authtoken_changelist")
USERS = reverse("admin:auth_user_changelist")


@pytest.fixture
def root(db):
    user = operator_create(username="root", tenant=None, password="pw-123456789", superuser=True)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def tokens(tenant):
    users = [operator_create(username=f"op{n}", tenant=tenant) for n in range(4)]
    for user in users:
        operator_token_create(user=user)
    return list(AuthToken.objects.order_by("pk"))


def answer(response):
    return response.status_code, response.get("Location"), response.content


def test_every_registered_admin_has_the_guard():
    for model, model_admin in admin.site._registry.items():
        assert isinstance(model_admin, DeclaredFiltersOnly), model._meta.label


def test_token_digests_are_no_lookup(root, tokens):
    digest = tokens[0].digest
    wrong = "0" if digest[0] != "0" else "1"
    for lookup in ["digest__startswith", "token_key__startswith", "user__auth_token_set__digest__startswith"]:
        right, other = root.get(TOKENS, {lookup: digest[:2]}), root.get(TOKENS, {lookup: wrong * 2})
        assert answer(right) == answer(other) and right.status_code == 400, lookup


def test_token_digests_are_not_searched(root, tokens):
    found = root.get(TOKENS, {"q": tokens[0].digest[:6]})
    assert found.status_code == 200 and list(found.context["cl"].result_list) == []
    by_user = root.get(TOKENS, {"q": "op2"})
    assert [t.user.username for t in by_user.context["cl"].result_list] == ["op2"]  # search still works


def test_token_digests_are_not_an_ordering(root, tokens):
    def order(o):
        response = root.get(TOKENS, {"o": o})
        assert response.status_code == 200
        return [t.pk for t in response.context["cl"].result_list]

    digest_column = 1 + list(response_list_display(root)).index("digest")
    assert order(str(digest_column)) == order(f"-{digest_column}")  # ignored both ways: no order by digest
    created_column = 1 + list(response_list_display(root)).index("created")
    assert order(str(created_column)) == list(reversed(order(f"-{created_column}")))  # other columns sort


def response_list_display(client):
    return client.get(TOKENS).context["cl"].list_display[1:]  # [0] is the action checkbox


def test_user_admin_takes_its_declared_filters_only(root, tokens):
    assert root.get(USERS, {"password__startswith": "pbkdf2"}).status_code == 400
    for params in [{"email__startswith": "a"}, {"username__startswith": "op"}, {"last_login__isnull": "True"}]:
        response = root.get(USERS, params)
        assert response.status_code == 302 and response["Location"] == f"{USERS}?e=1", params
    staff = root.get(USERS, {"is_superuser__exact": "1"})
    assert [u.username for u in staff.context["cl"].result_list] == ["root"]


@pytest.mark.parametrize(
    ("path", "secret"),
    [
        ("provision_token_hash", True),
        ("-provision_token_hash", True),
        ("device__provision_token_hash__startswith", True),
        ("^digest", True),
        ("user__password", True),
        ("broker_secret__isnull", True),
        ("device_id", False),
        ("tenant__name__icontains", False),
        ("job__document_type", False),
    ],
)
def test_is_secret(path, secret):
    assert is_secret(path) is secret
