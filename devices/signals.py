"""What devices tell the apps built on them (they connect in their AppConfig.ready()).

devices is the bottom of the domain: twin and jobs import it, never the reverse, so a
consequence elsewhere of a device change travels as a signal, inside the same transaction.
"""

from django.dispatch import Signal

# send(sender=Device, device=<the Device>, reason=str) within device_decommission's transaction.
device_decommissioned = Signal()

# Fleet provisioning by claim (devices.claims). The initial desired state of a template is the twin's
# to judge and to write, so both travel as signals (sent with send(): a receiver's error propagates).
# send(sender=ProvisioningTemplate, desired={...}, shadows={name: {...}}) before a template is saved:
# a receiver raises the DomainError (InvalidInput, PayloadTooLarge) that refuses a document.
template_desired_check = Signal()
# send(sender=Device, device=<the new Device>, desired={...}, shadows={name: {...}}) within the
# registration's transaction: the receiver writes the initial desired state.
device_registered = Signal()
