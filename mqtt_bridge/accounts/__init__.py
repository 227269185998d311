"""Who may do what on the broker: the device ACL rule (acl), per-device accounts on Mosquitto's
dynamic security plugin (dynsec, kept in step by sync), and the HTTP auth/ACL hooks of EMQX-style
brokers (hooks, hook_views). The embedded broker applies the same acl rule itself."""
