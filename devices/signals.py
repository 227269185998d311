"""What devices tell the apps built on them (they connect in their AppConfig.ready()).

devices is the bottom of the domain: twin and jobs import it, never the reverse, so a
consequence elsewhere of a device change travels as a signal, inside the same transaction.
"""

from django.dispatch import Signal

# send(sender=Device, device=<the Device>, reason=str) within device_decommission's transaction.
device_decommissioned = Signal()
