"""Node agent: profile files, SELinux policies and audit logs on each node. Not built yet."""
