"""The leader-elected reconciler: webhook configurations today; spod, statuses and finalizers later."""
