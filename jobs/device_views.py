"""Device jobs API, as AWS IoT Jobs: pending list, start the next execution, read and update one's own execution."""

from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from iotcloud.api.schema import error_responses
from iotcloud.api.serializers import ErrorSerializer
from iotcloud.api.views import DeviceAPIView
from jobs import services
from jobs.choices import TransitionRules
from jobs.selectors import device_execution, execution_document, pending_from_rows, pending_read
from jobs.serializers import (
    DeviceExecutionSerializer,
    ExecutionUpdateSerializer,
    PendingJobsSerializer,
    StartNextResponseSerializer,
    StartNextSerializer,
)

ERRORS = error_responses(400, 401, 404, 409, 413)


class PendingJobsView(DeviceAPIView):
    token_reads = {"GET": pending_read}  # the token lookup and the pending list: one statement

    @extend_schema(operation_id="device_jobs_pending", responses={200: PendingJobsSerializer, 401: ErrorSerializer})
    def get(self, request):
        return Response({"jobs": pending_from_rows(self.token_read_rows)})


class StartNextView(DeviceAPIView):
    @extend_schema(
        operation_id="device_jobs_start_next", request=StartNextSerializer,
        responses={200: StartNextResponseSerializer, **error_responses(400, 401, 409, 413)},
        description="Start the next pending execution (AWS StartNextPendingJobExecution): the oldest "
        "IN_PROGRESS one is returned as it is, else the oldest QUEUED one is claimed (QUEUED→IN_PROGRESS, "
        "with status_details and a step timer when given). `execution` is null when nothing is pending.",
    )  # fmt: skip
    def post(self, request):
        body = StartNextSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        execution = services.execution_start_next(
            device=self.device,
            status_details=body.validated_data.get("status_details"),
            step_timeout_minutes=body.validated_data.get("step_timeout_in_minutes"),
            rules=TransitionRules.SEED,
        )
        if execution is None:
            return Response({"execution": None})
        document = execution_document(device_execution(self.device, execution.job.job_id))
        return Response({"execution": DeviceExecutionSerializer(document).data})


class ExecutionView(DeviceAPIView):
    @extend_schema(operation_id="device_job_execution_get", responses={200: DeviceExecutionSerializer, **ERRORS})
    def get(self, request, job_id):
        return Response(DeviceExecutionSerializer(execution_document(device_execution(self.device, job_id))).data)

    @extend_schema(
        operation_id="device_job_execution_update", request=ExecutionUpdateSerializer,
        responses={200: DeviceExecutionSerializer, **ERRORS},
        description="QUEUED→IN_PROGRESS (claim), IN_PROGRESS→SUCCEEDED|FAILED|REJECTED; others 400, stale "
        "execution_number 409.",
    )  # fmt: skip
    def put(self, request, job_id):
        body = ExecutionUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        services.execution_update(
            device=self.device,
            job_id=job_id,
            status=body.validated_data["status"],
            status_details=body.validated_data.get("status_details"),
            execution_number=body.validated_data.get("execution_number"),
        )
        return Response(DeviceExecutionSerializer(execution_document(device_execution(self.device, job_id))).data)
