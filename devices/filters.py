import django_filters

from devices.choices import DeviceStatus
from devices.models import AuditEvent, Device
from devices.selectors import filter_by_tag
from twin.choices import SYNC_STATUSES
from twin.selectors import sync_status_q


class DeviceFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=DeviceStatus.choices)
    sync_status = django_filters.ChoiceFilter(
        choices=[(s.value, s.value) for s in SYNC_STATUSES], method="filter_sync_status"
    )
    tag = django_filters.CharFilter(
        method="filter_tag", help_text="`key` (has the tag) or `key:value` (tag equals value)."
    )
    device_id_prefix = django_filters.CharFilter(field_name="device_id", lookup_expr="startswith")

    class Meta:
        model = Device
        fields = ["status", "sync_status", "tag", "device_id_prefix"]

    def filter_sync_status(self, queryset, name, value):
        return queryset.filter(sync_status_q(value))

    def filter_tag(self, queryset, name, value):
        key, sep, tag_value = value.partition(":")
        return filter_by_tag(queryset, key, tag_value if sep else None)


class AuditFilter(django_filters.FilterSet):
    device_id = django_filters.CharFilter(field_name="device__device_id")
    actor = django_filters.CharFilter(help_text="e.g. operator:alice, device:acme/pump-1, job:fw-2-1, system")
    action = django_filters.CharFilter(help_text="e.g. desired.write, device.provision, job.create")
    job_id = django_filters.CharFilter()
    since = django_filters.IsoDateTimeFilter(field_name="at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["device_id", "actor", "action", "job_id", "since", "until"]
