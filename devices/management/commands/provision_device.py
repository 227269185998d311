import json

from django.core.management.base import BaseCommand, CommandError

from devices.models import Tenant
from devices.services import device_provision
from iotcloud.errors import DomainError


class Command(BaseCommand):
    help = "Provision a device in a tenant and print its provision token (shown once)."

    def add_arguments(self, parser):
        parser.add_argument("tenant")
        parser.add_argument("device_id")
        parser.add_argument("--tags", default="{}", help='JSON object, e.g. \'{"site": "paris"}\'')

    def handle(self, *args, tenant, device_id, tags, **options):
        tenant_obj = Tenant.objects.filter(id=tenant).first()
        if tenant_obj is None:
            raise CommandError(f"Tenant {tenant!r} does not exist")
        try:
            device, token = device_provision(tenant=tenant_obj, device_id=device_id, tags=json.loads(tags))
        except json.JSONDecodeError as exc:
            raise CommandError(f"--tags is not valid JSON: {exc}") from None
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"device {device} provisioned")
        self.stdout.write(f"provision token (shown once): {token}")
