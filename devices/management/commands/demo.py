"""Demo data for a first look: a tenant, an operator and a few devices.

Safe to run again (make run does, every time): existing demo objects are
kept, and fresh tokens are issued since tokens are only ever shown once.
The tokens are also written to var/demo.json for the device simulator.
"""

import json
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from devices.choices import Role
from devices.models import Device, Tenant
from devices.services import (
    device_provision,
    device_rotate_token,
    operator_create,
    operator_token_create,
    tenant_create,
)

DEVICES = [
    *[(f"thermo-{n:02}", {"site": "paris", "kind": "thermostat"}) for n in range(1, 7)],
    *[(f"meter-{n:02}", {"site": "lyon", "kind": "meter"}) for n in range(1, 5)],
    ("gateway-01", {"site": "paris", "kind": "gateway"}),
    ("gateway-02", {"site": "lyon", "kind": "gateway"}),
]


class Command(BaseCommand):
    help = "Create (or refresh) demo data and print tokens and a ready curl line."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", default="demo")
        parser.add_argument("--username", default="demo")
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    @transaction.atomic
    def handle(self, *args, tenant, username, base_url, **options):
        tenant_obj = Tenant.objects.filter(id=tenant).first() or tenant_create(tenant_id=tenant, name="Demo tenant")
        User = get_user_model()
        out = settings.VAR_DIR / "demo.json"
        previous = json.loads(out.read_text()) if out.exists() else {}
        # The demo login is kept in var/demo.json (mode 600) so every `make run` can print it again.
        password = previous.get("password") if previous.get("username") == username else None
        user = User.objects.filter(username=username).first()
        if user is None:
            password = secrets.token_urlsafe(9)
            user = operator_create(username=username, tenant=tenant_obj, role=Role.ADMIN, password=password)
        elif password and not user.check_password(password):
            password = None  # changed since: we no longer know it
        # Every run prints a fresh token; at the OPERATOR_TOKEN_LIMIT cap the oldest demo tokens make room.
        operator_token = operator_token_create(user=user, replace_oldest=True)

        device_tokens = {}
        for device_id, tags in DEVICES:
            device = Device.objects.filter(tenant=tenant_obj, device_id=device_id).first()
            if device is None:
                device, token = device_provision(tenant=tenant_obj, device_id=device_id, tags=tags)
            elif device.is_active:
                token = device_rotate_token(device=device)
            else:
                continue
            device_tokens[device_id] = token

        out.parent.mkdir(parents=True, exist_ok=True)
        out.touch(mode=0o600)
        out.chmod(0o600)
        saved = {
            "tenant": tenant,
            "username": username,
            "password": password,
            "operator_token": operator_token,
            "devices": device_tokens,
        }
        out.write_text(json.dumps(saved, indent=2))

        first = next(iter(device_tokens), None)
        self.stdout.write(f"tenant:          {tenant}")
        if password:
            self.stdout.write(f"operator:        {username} / {password}  (sign in at {base_url}/admin/)")
        else:
            self.stdout.write(f"operator:        {username} (existing account; its password was changed, not shown)")
        self.stdout.write(f"operator token:  {operator_token}")
        for device_id, token in device_tokens.items():
            self.stdout.write(f"device {device_id:<10} token: {token}")
        self.stdout.write(f"(tokens saved to {out})\n")
        self.stdout.write("Try:")
        self.stdout.write(
            f"  curl -s -X PATCH {base_url}/customer/devices/{first}/twin/desired "
            f"-H 'Authorization: Bearer {operator_token}' -H 'Content-Type: application/json' "
            '-d \'{"desired": {"reporting_interval_s": 30}}\''
        )
        if first:
            self.stdout.write(f"  curl -s {base_url}/device/v1/shadow -H 'X-Provision-Token: {device_tokens[first]}'")
