"""The `spo` command and the local control plane it runs (`spo up`)."""
