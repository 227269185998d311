from django.core.management.base import BaseCommand, CommandError

from devices.choices import Role
from devices.models import Tenant
from devices.services import operator_create, operator_token_create
from iotcloud.errors import DomainError


class Command(BaseCommand):
    help = "Create an operator in a tenant and print a bearer token for the API (shown once)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--tenant", help="tenant id (required unless --superuser)")
        parser.add_argument("--role", default=Role.OPERATOR, choices=Role.values)
        parser.add_argument("--email", default="")
        parser.add_argument("--password", help="also allow admin / browsable-API sign-in with this password")
        parser.add_argument("--superuser", action="store_true", help="sees and manages every tenant")

    def handle(self, *args, username, tenant, role, email, password, superuser, **options):
        tenant_obj = None
        if tenant:
            tenant_obj = Tenant.objects.filter(id=tenant).first()
            if tenant_obj is None:
                raise CommandError(f"Tenant {tenant!r} does not exist (create it with create_tenant)")
        try:
            user = operator_create(
                username=username, tenant=tenant_obj, role=role, email=email, password=password, superuser=superuser
            )
        except DomainError as exc:
            raise CommandError(exc.message) from None
        token = operator_token_create(user=user)
        self.stdout.write(f"operator {user.username} created (tenant={tenant or '-'}, role={role})")
        self.stdout.write(f"bearer token (shown once): {token}")
