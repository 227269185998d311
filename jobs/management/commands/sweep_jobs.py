"""python manage.py sweep_jobs — time out stuck executions and close expired jobs (the bridge also does this)."""

import time

from django.conf import settings
from django.core.management.base import BaseCommand

from jobs.services import job_sweep


class Command(BaseCommand):
    help = "Apply job in-progress timeouts and expiry once (or every JOBS_SWEEP_SECONDS with --loop)."

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true")

    def handle(self, *args, loop, **options):
        while True:
            result = job_sweep()
            self.stdout.write(f"timed out {result['timed_out']}, expired {result['expired']}")
            if not loop:
                return
            time.sleep(settings.JOBS_SWEEP_SECONDS)
