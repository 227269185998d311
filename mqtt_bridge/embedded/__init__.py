"""Zero-setup MQTT broker: amqtt in a daemon thread, with device auth and per-device topic ACLs.

server.EmbeddedBroker runs it; plugins holds authentication, the topic ACL and retained storage;
broker holds the fixes to amqtt's broker.

Used when MQTT_URL is empty (``manage.py mqtt_broker``, ``make run``, the MQTT tests).
Production uses Mosquitto or another real broker; this one exists so the platform
runs on a bare machine with nothing but Python.

Accounts:

- service accounts (the bridge): any username/password pair given in
  ``service_users``; may publish and subscribe anything;
- devices: username ``<tenant_id>/<device_id>``, password = the device's
  provision token, checked against the database, and the username as client id
  (``acl.device_client_id``); may publish only to their own ``shadow/reported``
  and subscribe only under their own ``tenant/{t}/device/{d}/``.

Every session is authenticated, never anonymous: amqtt throws away the
subscriptions and offline QoS 1 queues of anonymous sessions, so
``clean_session=False`` only works with authentication on.

On top of amqtt 0.12.1, ``_Broker`` and ``_BrokerHandler`` fix what would otherwise
break the ACL or the bridge (each override says why):

- authentication happens *before* any existing session of the client id is
  deleted or taken over, a client id stays bound to the account that created
  it, and a will message must pass the PUBLISH ACL;
- retained messages go, on (re)connect, only to the client's own subscriptions
  (amqtt sends them for everybody's, unchecked); a device's retain flag is ignored;
- QoS 1 to clients is at least once: an unacknowledged message is kept and sent
  again (DUP) when the persistent session reconnects (amqtt drops it after 5 s);
  messages queued while offline are delivered with RETAIN=0;
- shared subscriptions (``$share/<group>/<filter>``) deliver each message to one
  member (amqtt accepts them and never delivers anything);
- an MQTT 5 CONNECT gets CONNACK 0x01 at once (amqtt waits for bytes that never
  come), a silent connection is closed after 1.5 x its keep-alive (amqtt never
  closes it), and a connection that sends no CONNECT within 10 s is dropped.
"""

from mqtt_bridge.embedded.server import DEFAULT_PORT, DEFAULT_USER, EmbeddedBroker, embedded_credentials

__all__ = ["DEFAULT_PORT", "DEFAULT_USER", "EmbeddedBroker", "embedded_credentials"]
