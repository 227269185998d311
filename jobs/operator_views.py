"""Operator jobs API: create, list, detail with progress, cancel, executions."""

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from devices.selectors import tenant_for_write
from iotcloud.api.schema import OPERATOR_ERRORS as ERRORS
from iotcloud.api.schema import TENANT_PARAM
from iotcloud.api.views import TenantScopedViewSet, cursor_pagination
from jobs import services
from jobs.choices import ExecutionStatus
from jobs.desired import cancel_and_revert
from jobs.filters import ExecutionFilter, JobFilter
from jobs.models import Job, JobExecution
from jobs.selectors import job_execution, job_for_operator, jobs_for_operator
from jobs.serializers import (
    ExecutionCancelSerializer,
    ExecutionDetailSerializer,
    ExecutionSerializer,
    JobCancelSerializer,
    JobCreateSerializer,
    JobListSerializer,
    JobSerializer,
    JobTemplateSaveSerializer,
    JobTemplateSerializer,
)
from jobs.templates import template_of, template_resolve, template_save, templates_of


@extend_schema_view(
    list=extend_schema(operation_id="jobs_list", parameters=[TENANT_PARAM]),
    retrieve=extend_schema(
        operation_id="jobs_get", parameters=[TENANT_PARAM], responses={200: JobSerializer, **ERRORS}
    ),
)
class JobViewSet(TenantScopedViewSet):
    model = Job
    serializer_class = JobListSerializer
    filterset_class = JobFilter
    pagination_class = cursor_pagination("-created_at", page_size=50, max_page_size=500)
    lookup_field = "job_id"

    def scoped(self, user, tenant_id):
        return jobs_for_operator(user, tenant_id=tenant_id)

    def lookup(self, user, key, tenant_id):
        return job_for_operator(user, key, tenant_id=tenant_id)

    def retrieve(self, request, job_id=None):
        return Response(JobSerializer(self.get_object()).data)

    @extend_schema(
        operation_id="jobs_create",
        request=JobCreateSerializer,
        responses={201: JobSerializer, **ERRORS},
        description="Create a job: one QUEUED execution per target device (device ids and/or a tag selector), "
        "released to the devices at once, or at the pace of its rollout.",
    )
    def create(self, request):
        body = JobCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        tenant = tenant_for_write(request.user, data.get("tenant") or self.tenant_param)
        job = services.job_create(
            tenant=tenant,
            job_id=data.get("job_id"),
            document_type=data.get("document_type"),
            document_params=data.get("document_params"),
            description=data.get("description", ""),
            device_ids=data["targets"].get("device_ids"),
            tags=data["targets"].get("tags"),
            expires_at=data.get("expires_at"),
            in_progress_timeout_seconds=data.get("in_progress_timeout_seconds"),
            rollout=data.get("rollout"),
            abort_config=data.get("abort_config"),
            scheduling=data.get("scheduling"),
            retry_config=data.get("retry_config"),
            template=data.get("template"),
            continuous=data.get("continuous", False),
        )
        return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="jobs_delete",
        responses={204: None, **ERRORS},
        parameters=[TENANT_PARAM, OpenApiParameter("force", bool, description="also a job still running: "
                                                   "it is canceled first, its running executions too")],
        description="Delete a job with its executions and their history (409 job_in_progress for a job still "
        "running, unless force=true).",
    )  # fmt: skip
    def destroy(self, request, job_id=None):
        force = request.query_params.get("force", "false")
        if force not in ("true", "false"):
            raise ValidationError({"force": ["Must be true or false."]})
        services.job_delete(job=self.get_object(), force=force == "true")
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="jobs_cancel",
        request=JobCancelSerializer,
        responses={200: JobSerializer, **ERRORS},
        parameters=[TENANT_PARAM],
        description="Cancel QUEUED executions; with force, IN_PROGRESS ones too. The job ends CANCELED. With "
        "revert (desired-state jobs), every device the job patched gets its previous values back first.",
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, job_id=None):
        body = JobCancelSerializer(data=request.data or {})
        body.is_valid(raise_exception=True)
        data, actor = body.validated_data, services.operator_actor(request.user)
        if data["revert"]:
            job = cancel_and_revert(job=self.get_object(), reason=data.get("reason", ""), actor=actor)
        else:
            job = services.job_cancel(job=self.get_object(), force=data["force"], reason=data.get("reason", ""),
                                      actor=actor)  # fmt: skip
        return Response(JobSerializer(job).data)

    @extend_schema(
        operation_id="jobs_execution", responses={200: ExecutionDetailSerializer, **ERRORS}, parameters=[TENANT_PARAM],
        description="One device's execution of the job, with its history (every change: when, status, details, "
        "execution number, by whom).",
    )  # fmt: skip
    @action(detail=True, methods=["get"], url_path=r"executions/(?P<device_id>[^/]+)")
    def execution(self, request, job_id=None, device_id=None):
        return Response(ExecutionDetailSerializer(job_execution(self.get_object(), device_id)).data)

    @extend_schema(
        operation_id="jobs_execution_cancel", request=ExecutionCancelSerializer,
        responses={200: ExecutionDetailSerializer, **ERRORS}, parameters=[TENANT_PARAM],
        description="Cancel one device's execution: a QUEUED one, or an IN_PROGRESS one with force (409 otherwise).",
    )  # fmt: skip
    @action(detail=True, methods=["post"], url_path=r"executions/(?P<device_id>[^/]+)/cancel")
    def execution_cancel(self, request, job_id=None, device_id=None):
        body = ExecutionCancelSerializer(data=request.data or {})
        body.is_valid(raise_exception=True)
        execution = services.execution_cancel(
            job=self.get_object(), device_id=device_id, force=body.validated_data["force"],
            reason=body.validated_data.get("reason", ""), actor=services.operator_actor(request.user),
        )  # fmt: skip
        return Response(ExecutionDetailSerializer(execution).data)

    @extend_schema(
        operation_id="jobs_executions",
        responses={200: ExecutionSerializer(many=True)},
        parameters=[
            TENANT_PARAM,
            OpenApiParameter("status", str, enum=ExecutionStatus.values),
            OpenApiParameter("device_id", str),
            OpenApiParameter("released", bool, description="false: the executions its rollout has not released yet"),
        ],
    )
    @action(
        detail=True, methods=["get"], pagination_class=cursor_pagination("id"), serializer_class=ExecutionSerializer
    )
    def executions(self, request, job_id=None):
        job = self.get_object()
        filterset = ExecutionFilter(
            request.query_params, queryset=JobExecution.objects.filter(job=job).select_related("job", "device")
        )
        if not filterset.is_valid():
            raise ValidationError(filterset.errors)
        page = self.paginate_queryset(filterset.qs)
        return self.get_paginated_response(ExecutionSerializer(page, many=True).data)


class JobTemplateViewSet(viewsets.ViewSet):
    """Job templates: the tenant's own (latest versions) and the built-ins; POST saves the next version."""

    lookup_value_regex = "[^/]+"

    def _tenant(self, request, requested=None):
        return tenant_for_write(request.user, requested or request.query_params.get("tenant"))

    @extend_schema(operation_id="job_templates_list", parameters=[TENANT_PARAM],
                   responses={200: JobTemplateSerializer(many=True)})  # fmt: skip
    def list(self, request):
        return Response(JobTemplateSerializer(templates_of(self._tenant(request)), many=True).data)

    @extend_schema(
        operation_id="job_templates_get", responses={200: JobTemplateSerializer, **ERRORS},
        parameters=[TENANT_PARAM, OpenApiParameter("version", int, description="default: the latest")],
    )  # fmt: skip
    def retrieve(self, request, pk=None):
        version = request.query_params.get("version")
        ref = f"{pk}@{version}" if version else pk
        return Response(JobTemplateSerializer(template_resolve(self._tenant(request), ref)).data)

    @extend_schema(operation_id="job_templates_save", request=JobTemplateSaveSerializer,
                   responses={201: JobTemplateSerializer, **ERRORS})  # fmt: skip
    def create(self, request):
        body = JobTemplateSaveSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        tenant = self._tenant(request, data.pop("tenant", None))
        saved = template_save(tenant=tenant, actor=services.operator_actor(request.user), **data)
        return Response(JobTemplateSerializer(template_of(saved)).data, status=status.HTTP_201_CREATED)
