from django.urls import path
from rest_framework.routers import SimpleRouter

from jobs.device_views import ExecutionView, PendingJobsView, StartNextView
from jobs.operator_views import JobTemplateViewSet, JobViewSet

router = SimpleRouter(trailing_slash=False)
router.register("customer/jobs", JobViewSet, basename="job")
router.register("customer/job-templates", JobTemplateViewSet, basename="job-template")

urlpatterns = [
    path("device/v1/jobs/pending", PendingJobsView.as_view(), name="device-jobs-pending"),
    path("device/v1/jobs/start-next", StartNextView.as_view(), name="device-jobs-start-next"),
    path("device/v1/jobs/<str:job_id>/execution", ExecutionView.as_view(), name="device-job-execution"),
    *router.urls,
]
