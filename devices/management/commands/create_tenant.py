from django.core.management.base import BaseCommand, CommandError

from devices.services import tenant_create
from iotcloud.errors import DomainError


class Command(BaseCommand):
    help = "Create a tenant. Its id goes into MQTT topics: a-z 0-9 _ -."

    def add_arguments(self, parser):
        parser.add_argument("tenant_id")
        parser.add_argument("--name", default="")

    def handle(self, *args, tenant_id, name, **options):
        try:
            tenant = tenant_create(tenant_id=tenant_id, name=name)
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"tenant {tenant.id} created")
