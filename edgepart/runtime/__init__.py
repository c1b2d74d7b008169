"""The local runtime: deployments as processes on this host, optionally inside emulated edge devices."""
