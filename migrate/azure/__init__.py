"""Azure control plane: clouds, credentials, read-only ARM preflight, and database provisioning.

Modules are imported directly (`migrate.azure.preflight`, ...) so the CLI does not pay for the Azure
management SDKs unless a plan has Azure resources.
"""
