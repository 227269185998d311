import django_filters

from jobs.choices import ExecutionStatus, JobStatus
from jobs.models import Job, JobExecution


class JobFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=JobStatus.choices)
    document_type = django_filters.CharFilter()

    class Meta:
        model = Job
        fields = ["status", "document_type"]


class ExecutionFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=ExecutionStatus.choices)
    device_id = django_filters.CharFilter(field_name="device__device_id")
    released = django_filters.BooleanFilter(field_name="released_at", lookup_expr="isnull", exclude=True)

    class Meta:
        model = JobExecution
        fields = ["status", "device_id", "released"]
