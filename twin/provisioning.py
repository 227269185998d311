"""The twin's part in fleet provisioning by claim (devices.claims): a template's initial desired state.

devices does not know the twin, so it asks through devices.signals; TwinConfig.ready() connects these:
- check_template_desired: the documents keep the twin's rules (iotcloud.limits.check_document, as any
  desired write) and the shadow names are valid;
- write_initial_desired: within the registration's transaction, the new device's shadows get them
  (twin.engine.shadow_apply, as an operator's write: versions, metadata, events, delivery, audit).
"""

from __future__ import annotations

from iotcloud.errors import InvalidInput
from iotcloud.limits import check_document
from iotcloud.rules import SHADOW_NAME
from twin.engine import CLASSIC, Mode, ShadowChange, shadow_apply

MAX_SHADOWS = 10  # named shadows a template may give a device


def check_template_desired(sender, *, desired: dict, shadows: dict, **kwargs) -> None:
    check_document(desired, name="desired")
    if len(shadows) > MAX_SHADOWS:
        raise InvalidInput(
            f"{len(shadows)} named shadows; a template gives at most {MAX_SHADOWS}", code="too_many_shadows"
        )
    for name, document in shadows.items():
        if not SHADOW_NAME.matches(name):  # "" too: the classic shadow's initial state is "desired"
            raise InvalidInput(
                f"Invalid shadow name {name[:80]!r} in shadows: use {SHADOW_NAME.text} (the classic shadow's initial "
                'desired state is "desired")',
                code="invalid_shadow_name",
            )
        check_document(document, name=f"shadows.{name}")


def write_initial_desired(sender, *, device, desired: dict, shadows: dict, **kwargs) -> None:
    changes = [ShadowChange(device.tenant_id, device.device_id, CLASSIC, desired=desired, desired_mode=Mode.REPLACE)]
    changes = changes if desired else []
    changes += [
        ShadowChange(device.tenant_id, device.device_id, name, desired=document, desired_mode=Mode.REPLACE)
        for name, document in sorted(shadows.items())
    ]
    if not changes:
        return
    for result in shadow_apply(changes):
        if result.error is not None:  # checked when the template was saved; the limits may have changed since
            raise result.error
