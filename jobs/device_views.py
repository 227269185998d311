"""Device jobs API, as AWS IoT Jobs: pending list, read and update one's own execution."""

from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from iotcloud.api.schema import error_responses
from iotcloud.api.serializers import ErrorSerializer
from iotcloud.api.views import DeviceAPIView
from jobs import services
from jobs.selectors import device_execution, execution_document, pending_jobs
from jobs.serializers import DeviceExecutionSerializer, ExecutionUpdateSerializer, PendingJobsSerializer

ERRORS = error_responses(400, 401, 404, 409, 413)


class PendingJobsView(DeviceAPIView):
    @extend_schema(operation_id="device_jobs_pending", responses={200: PendingJobsSerializer, 401: ErrorSerializer})
    def get(self, request):
        return Response({"jobs": pending_jobs(self.device)})


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
