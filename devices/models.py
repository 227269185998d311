"""Tenants, operator memberships and devices (with their shadow columns).

Writes go through devices.services and twin.services; these classes only
describe the data. Table and column names follow the original design
(`device_state`, `provision_token_hash`, the shadow columns).
"""

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import F, Q

from devices.choices import CredentialKind, DesiredWrites, DeviceStatus, Role
from iotcloud.rules import DEVICE_ID, PROVISIONING_TEMPLATE_NAME, SERIAL, TENANT_ID

# Tenant and device ids go into MQTT topics: the rules (iotcloud.rules) keep / + # out.
tenant_id_validator = RegexValidator(TENANT_ID.pattern, f"Tenant id: {TENANT_ID.text}.")
device_id_validator = RegexValidator(DEVICE_ID.pattern, f"Device id: {DEVICE_ID.text} (no / + # or spaces).")


class Tenant(models.Model):
    id = models.CharField(primary_key=True, max_length=TENANT_ID.max_length, validators=[tenant_id_validator])
    name = models.CharField(max_length=200)
    # Devices that write desired (AWS IoT devices commonly do) are refused unless the tenant allows it.
    device_desired_writes = models.CharField(max_length=16, choices=DesiredWrites.choices, default=DesiredWrites.DENY)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "tenants"
        ordering = ["id"]

    def __str__(self):
        return self.id


class Membership(models.Model):
    """Which tenant an operator acts in, and with what role."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.OPERATOR)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "tenant_memberships"

    def __str__(self):
        return f"{self.user} @ {self.tenant_id} ({self.role})"


class Device(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="devices")
    device_id = models.CharField(max_length=DEVICE_ID.max_length, validators=[device_id_validator])
    # sha256 hex of the provision token; the token itself is never stored.
    provision_token_hash = models.CharField(max_length=64, unique=True)
    status = models.CharField(max_length=16, choices=DeviceStatus.choices, default=DeviceStatus.ACTIVE)
    tags = models.JSONField(default=dict, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    decommissioned_at = models.DateTimeField(null=True, blank=True)

    # Shadow.
    desired_state = models.JSONField(default=dict, blank=True)
    reported_state = models.JSONField(default=dict, blank=True)
    desired_version = models.PositiveIntegerField(default=0)
    reported_version = models.PositiveIntegerField(default=0)
    shadow_updated_at = models.DateTimeField(null=True, blank=True)
    reported_updated_at = models.DateTimeField(null=True, blank=True)
    # Beside the seed's columns: per-field timestamps (twin.shadow.leaf_metadata) and the single
    # document version of AWS IoT, advanced by every accepted change of desired or reported.
    desired_metadata = models.JSONField(default=dict, blank=True)
    reported_metadata = models.JSONField(default=dict, blank=True)
    shadow_version = models.PositiveIntegerField(default=0)

    # Delivery: the highest desired_version the MQTT bridge has published.
    desired_published_version = models.PositiveIntegerField(default=0)

    # The device's own account on a broker the platform manages (MQTT_DEVICE_AUTH=dynsec):
    # provisioning, rotation and decommission advance broker_account_version; the bridge
    # applies it and records broker_synced_version. A new token travels to the bridge in
    # broker_secret, encrypted (iotcloud.sealing), and is erased once applied.
    broker_account_version = models.PositiveIntegerField(default=0)
    broker_synced_version = models.PositiveIntegerField(default=0)
    broker_secret = models.TextField(blank=True, default="")

    class Meta:
        db_table = "device_state"
        ordering = ["tenant_id", "device_id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "device_id"], name="uniq_device_state_tenant_device"),
            models.CheckConstraint(
                condition=Q(reported_version__lte=F("desired_version")),
                name="device_state_reported_not_ahead",
            ),
        ]
        indexes = [
            models.Index(
                fields=["tenant"],
                name="idx_device_state_shadow_pending",
                condition=Q(desired_version__gt=F("reported_version")),
            ),
            # The operator's list filtered by sync status pending, in its page order (device_id): a page
            # reads its own rows at any fleet size, where the tenant's unique index would be walked past
            # every device in sync (bench/fleet_size). The index above stays: the original runbook's.
            models.Index(
                fields=["tenant", "device_id"],
                name="idx_device_state_pending_list",
                condition=Q(desired_version__gt=F("reported_version")),
            ),
            # Stale-device filters and "recently seen" views.
            models.Index(fields=["tenant", "last_seen"], name="idx_device_state_last_seen"),
            models.Index(
                fields=["id"],
                name="idx_device_state_unpublished",
                condition=Q(desired_version__gt=F("desired_published_version")),
            ),
            models.Index(
                fields=["id"],
                name="idx_device_state_broker_pending",
                condition=Q(broker_account_version__gt=F("broker_synced_version")),
            ),
        ]

    def __str__(self):
        return f"{self.tenant_id}/{self.device_id}"

    @property
    def is_active(self) -> bool:
        return self.status == DeviceStatus.ACTIVE


class AuditEvent(models.Model):
    """Who changed what, when, through which channel (devices.audit): desired-state writes with their
    before and after, job actions, device lifecycle changes. Written with the change, in its
    transaction; pruned after AUDIT_RETENTION_DAYS."""

    # No index of its own: the three below start with it (every desired write inserts into each index).
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    device = models.ForeignKey(Device, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    at = models.DateTimeField()
    actor = models.CharField(max_length=160)  # operator:<name>, device:<tenant>/<id>, job:<id>, system
    channel = models.CharField(max_length=16)  # api, admin, http, mqtt, job, system
    action = models.CharField(max_length=32)  # e.g. desired.write, device.provision, job.create
    shadow = models.CharField(max_length=64, blank=True, default="")
    job_id = models.CharField(max_length=64, blank=True, default="")
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    version = models.PositiveIntegerField(null=True, blank=True)  # the desired version the write made

    class Meta:
        db_table = "audit_events"
        indexes = [
            models.Index(fields=["tenant", "device", "at"], name="idx_audit_device"),
            models.Index(fields=["tenant", "actor", "at"], name="idx_audit_actor"),
            models.Index(fields=["tenant", "at"], name="idx_audit_at"),
        ]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action}"


class CertificateAuthority(models.Model):
    """The platform's certificate authority for device certificates (devices.certificates): one row,
    made on first use. Its key is sealed (iotcloud.sealing: Fernet with BROKER_CREDENTIALS_KEY or a key
    derived from SECRET_KEY), never stored in the clear; the broker trusts its certificate."""

    name = models.CharField(max_length=32, unique=True)
    certificate_pem = models.TextField()
    key_sealed = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "certificate_authorities"

    def __str__(self):
        return self.name


class DeviceCertificate(models.Model):
    """An X.509 certificate the platform CA issued: a device's, subject CN "<tenant>/<device_id>" (its
    broker username), O "<tenant>"; or a provisioning claim's (`claim`, device null: CN
    "_claim-cert/<claim id>"). Revoked by a newer certificate, by decommissioning, by revoking the
    claim, or by hand; the revocation list names the revoked ones until they expire (a deleted
    claim's stay here, revoked, claim null)."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="certificates", null=True, blank=True)
    claim = models.ForeignKey(
        "ProvisioningClaim", on_delete=models.SET_NULL, related_name="certificates", null=True, blank=True
    )
    serial = models.CharField(max_length=40, unique=True)  # hex, as the revocation list names it
    fingerprint = models.CharField(max_length=64, unique=True)  # SHA-256 of the DER, hex
    certificate_pem = models.TextField()
    not_after = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoke_reason = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        db_table = "device_certificates"
        indexes = [
            models.Index(fields=["device", "created_at"], name="idx_device_cert_device"),
            models.Index(fields=["revoked_at"], name="idx_device_cert_revoked", condition=Q(revoked_at__isnull=False)),
        ]

    def __str__(self):
        return f"{self.device or self.claim or 'claim (deleted)'} #{self.serial[:12]}"


# --- fleet provisioning by claim (devices.claims) ----------------------------------------------------


class ProvisioningTemplate(models.Model):
    """What a device registering with one of the template's claims becomes: its id (device_id_prefix +
    its serial), tags, initial desired state (classic and named shadows) and credential."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="provisioning_templates")
    name = models.CharField(max_length=PROVISIONING_TEMPLATE_NAME.max_length)
    description = models.TextField(blank=True, default="")
    device_id_prefix = models.CharField(max_length=64, blank=True, default="")
    tags = models.JSONField(default=dict, blank=True)
    desired = models.JSONField(default=dict, blank=True)  # the classic shadow's initial desired state
    shadows = models.JSONField(default=dict, blank=True)  # {shadow name: its initial desired state}
    credential = models.CharField(max_length=16, choices=CredentialKind.choices, default=CredentialKind.TOKEN)
    # null: any serial; else the serials that may register (a list, read with the template's row).
    allowed_serials = models.JSONField(null=True, blank=True)
    # The pre-provisioning check (devices.provisioning_hook): "" for none; its signing secret sealed.
    hook_url = models.CharField(max_length=2000, blank=True, default="")
    hook_secret = models.TextField(blank=True, default="")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "provisioning_templates"
        ordering = ["tenant_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="uniq_provisioning_template_tenant_name"),
        ]

    def __str__(self):
        return f"{self.tenant_id}/{self.name}"


class ProvisioningClaim(models.Model):
    """A claim credential of a template, baked into firmware: a token (its sha256 digest here, the
    token shown once) or a claim certificate (DeviceCertificate with this claim; token_hash null),
    optionally limited in registrations and time, revocable."""

    template = models.ForeignKey(ProvisioningTemplate, on_delete=models.CASCADE, related_name="claims")
    credential = models.CharField(max_length=16, choices=CredentialKind.choices, default=CredentialKind.TOKEN)
    token_hash = models.CharField(max_length=64, unique=True, null=True, blank=True)
    # A claim certificate's broker account (MQTT_DEVICE_AUTH=dynsec), kept in step as a device's is.
    broker_account_version = models.PositiveIntegerField(default=0)
    broker_synced_version = models.PositiveIntegerField(default=0)
    label = models.CharField(max_length=200, blank=True, default="")
    max_registrations = models.PositiveIntegerField(null=True, blank=True)  # null: no limit
    registrations = models.PositiveIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "provisioning_claims"
        ordering = ["template_id", "id"]
        constraints = [
            # The limit is kept by the guarded UPDATE of devices.claims; the database keeps it too.
            models.CheckConstraint(
                condition=Q(max_registrations__isnull=True) | Q(registrations__lte=F("max_registrations")),
                name="provisioning_claim_within_limit",
            ),
            models.CheckConstraint(
                condition=~Q(credential="token") | Q(token_hash__isnull=False), name="provisioning_claim_token_digest"
            ),
        ]

    def __str__(self):
        return f"claim {self.pk} of {self.template}"


class Registration(models.Model):
    """A device registered by claim. Unique per (tenant, serial): a serial registers exactly once."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    serial = models.CharField(max_length=SERIAL.max_length)
    claim = models.ForeignKey(ProvisioningClaim, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    template_name = models.CharField(max_length=PROVISIONING_TEMPLATE_NAME.max_length)  # kept if it is deleted
    device = models.ForeignKey(Device, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    channel = models.CharField(max_length=16)  # http, mqtt
    at = models.DateTimeField()

    class Meta:
        db_table = "provisioning_registrations"
        ordering = ["tenant_id", "-at"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "serial"], name="uniq_provisioning_registration_serial"),
        ]

    def __str__(self):
        return f"{self.tenant_id}/{self.serial}"
