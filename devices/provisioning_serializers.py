"""Fleet provisioning by claim (devices.claims): the operator API's templates, claims and registrations,
and the device's registration. The rules are the service's; these declare the shapes."""

from django.utils import timezone
from rest_framework import serializers

from devices.choices import CredentialKind
from devices.models import ProvisioningClaim, ProvisioningTemplate, Registration
from iotcloud.api.fields import JSONObjectField, StrictCharField, StrictIntegerField, StrictSerializer
from iotcloud.rules import DEVICE_ID_PREFIX, PROVISIONING_TEMPLATE_NAME, SERIAL


class ProvisioningTemplateSerializer(serializers.ModelSerializer):
    tenant = serializers.CharField(source="tenant_id", read_only=True)
    allowed_serials = serializers.ListField(child=serializers.CharField(), allow_null=True)
    hook_secret_set = serializers.SerializerMethodField(help_text="Whether the hook has its signing secret.")

    class Meta:
        model = ProvisioningTemplate
        fields = ["name", "tenant", "description", "device_id_prefix", "tags", "desired", "shadows", "credential",
                  "allowed_serials", "hook_url", "hook_secret_set", "enabled", "created_at", "updated_at"]  # fmt: skip
        read_only_fields = fields

    def get_hook_secret_set(self, template) -> bool:
        return bool(template.hook_secret)


class ProvisioningTemplateWriteSerializer(StrictSerializer):
    name = StrictCharField(allow_blank=True, help_text=f"{PROVISIONING_TEMPLATE_NAME.text}; unique in the tenant.")
    description = StrictCharField(required=False, allow_blank=True, max_length=2000)
    device_id_prefix = StrictCharField(
        required=False,
        allow_blank=True,
        help_text=f"{DEVICE_ID_PREFIX.text}: a device's id is the prefix + its serial.",
    )
    tags = JSONObjectField(required=False, help_text="Tags every registered device gets.")
    desired = JSONObjectField(required=False, help_text="The classic shadow's initial desired state.")
    shadows = JSONObjectField(required=False, help_text='Named shadows\' initial desired state: {"config": {...}}.')
    credential = serializers.ChoiceField(
        choices=CredentialKind.choices,
        required=False,
        help_text="The identity issued: a provision token, or an X.509 certificate (from the device's CSR).",
    )
    allowed_serials = serializers.ListField(
        child=serializers.JSONField(), allow_null=True, required=False,
        help_text=f"Only these serials ({SERIAL.text}) may register; null or absent: any serial.",
    )  # fmt: skip
    hook_url = StrictCharField(
        required=False, allow_blank=True, max_length=2000,
        help_text="The pre-provisioning check: an http(s) URL iotcloud POSTs each registration to (signed with "
        'hook_secret) before it creates anything; it answers {"allow": true|false, "reason"?, "tags"?}. '
        "Empty: no check.",
    )  # fmt: skip
    hook_secret = StrictCharField(
        required=False, allow_blank=False, write_only=True, max_length=256, trim_whitespace=False,
        help_text="16 to 256 characters: the key of the X-Iotcloud-Signature HMAC-SHA256 header. Never shown again.",
    )  # fmt: skip
    enabled = serializers.BooleanField(required=False, help_text="false: no claim of it registers anybody.")
    tenant = StrictCharField(required=False, help_text="Superusers only: the tenant to create it in.")


class ProvisioningTemplateUpdateSerializer(ProvisioningTemplateWriteSerializer):
    name = StrictCharField(required=False, allow_blank=True, help_text=PROVISIONING_TEMPLATE_NAME.text)
    tenant = None


class ClaimSerializer(serializers.ModelSerializer):
    id = serializers.IntegerField(read_only=True)
    template = serializers.CharField(source="template.name", read_only=True)
    status = serializers.SerializerMethodField()
    certificate_serial = serializers.SerializerMethodField(help_text="A claim certificate's serial (hex), or null.")

    class Meta:
        model = ProvisioningClaim
        fields = ["id", "template", "label", "credential", "certificate_serial", "status", "max_registrations",
                  "registrations", "expires_at", "revoked_at", "created_at"]  # fmt: skip
        read_only_fields = fields

    def get_certificate_serial(self, claim) -> str | None:
        if claim.credential != CredentialKind.CERTIFICATE:
            return None
        issued = max(claim.certificates.all(), key=lambda c: c.created_at, default=None)
        return issued.serial if issued is not None else None

    def get_status(self, claim) -> str:
        if claim.revoked_at is not None:
            return "revoked"
        if claim.expires_at is not None and claim.expires_at <= timezone.now():
            return "expired"
        if claim.max_registrations is not None and claim.registrations >= claim.max_registrations:
            return "exhausted"
        return "active"


class ClaimCreatedSerializer(ClaimSerializer):
    claim_token = serializers.CharField(allow_null=True, help_text="A token claim's: shown once; bake it into "
                                        "the firmware.")  # fmt: skip
    certificate_pem = serializers.CharField(required=False, help_text="A certificate claim's certificate.")
    private_key_pem = serializers.CharField(required=False, allow_null=True,
                                            help_text="Made when no CSR was sent; shown once.")  # fmt: skip
    ca_certificate_pem = serializers.CharField(required=False, help_text="The CA the broker's certificate "
                                               "listener trusts.")  # fmt: skip

    class Meta(ClaimSerializer.Meta):
        fields = [*ClaimSerializer.Meta.fields, "claim_token", "certificate_pem", "private_key_pem",
                  "ca_certificate_pem"]  # fmt: skip
        read_only_fields = fields


class ClaimCreateSerializer(StrictSerializer):
    label = StrictCharField(required=False, allow_blank=True, max_length=200, help_text="e.g. the factory or batch.")
    max_registrations = StrictIntegerField(
        required=False, allow_null=True, min_value=1, help_text="At most this many devices register with it."
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True, help_text="ISO 8601, with a time zone.")
    credential = serializers.ChoiceField(
        choices=CredentialKind.choices, required=False,
        help_text="token (default): a claim token; certificate: a claim certificate.",
    )  # fmt: skip
    csr = StrictCharField(required=False, allow_blank=False, max_length=16384, trim_whitespace=False,
                          help_text="A certificate claim: the CSR (PEM, CN empty) of the key the factory keeps; "
                          "without one a key pair is made and returned once.")  # fmt: skip


class RegistrationSerializer(serializers.ModelSerializer):
    device_id = serializers.CharField(source="device.device_id", allow_null=True, default=None)
    claim = serializers.IntegerField(source="claim_id", allow_null=True)
    template = serializers.CharField(source="template_name")

    class Meta:
        model = Registration
        fields = ["serial", "device_id", "template", "claim", "channel", "at"]
        read_only_fields = fields


class RegisterSerializer(StrictSerializer):
    serial = StrictCharField(allow_blank=True, max_length=1024, help_text=f"The device's serial: {SERIAL.text}.")
    csr = StrictCharField(required=False, allow_blank=False, max_length=16384, trim_whitespace=False,
                          help_text="A certificate template's device: its CSR (PEM), so that its private key never "
                          "leaves it; without one a key pair is made and returned once.")  # fmt: skip


class RegisteredSerializer(serializers.Serializer):
    tenant = serializers.CharField()
    device_id = serializers.CharField()
    provision_token = serializers.CharField(allow_null=True, help_text="A token template's identity, shown once.")
    certificate_pem = serializers.CharField(required=False, help_text="A certificate template's identity.")
    private_key_pem = serializers.CharField(required=False, allow_null=True,
                                            help_text="Made when no CSR was sent; shown once.")  # fmt: skip
    ca_certificate_pem = serializers.CharField(required=False, help_text="The device CA the broker trusts.")
