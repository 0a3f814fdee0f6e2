"""Shared vocabulary of the operator: resource types, constants, validation, Kubernetes access."""
