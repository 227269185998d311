from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from devices.services import operator_token_issue
from iotcloud.errors import DomainError


class Command(BaseCommand):
    help = (
        "Issue another bearer token for an existing operator (shown once). It expires after "
        "OPERATOR_TOKEN_TTL_HOURS; an operator holds at most OPERATOR_TOKEN_LIMIT tokens."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument(
            "--replace-oldest",
            action="store_true",
            help="at the OPERATOR_TOKEN_LIMIT cap, revoke the operator's oldest token(s) instead of failing",
        )

    def handle(self, *args, username, replace_oldest, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"User {username!r} does not exist")
        try:
            instance, token = operator_token_issue(user=user, replace_oldest=replace_oldest)
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(token)
        self.stderr.write(f"expires {instance.expiry.isoformat() if instance.expiry else 'never'}")
