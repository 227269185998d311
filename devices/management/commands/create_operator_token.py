from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from devices.services import operator_token_create


class Command(BaseCommand):
    help = "Issue another bearer token for an existing operator (shown once)."

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, username, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"User {username!r} does not exist")
        self.stdout.write(operator_token_create(user=user))
