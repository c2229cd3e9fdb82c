"""The front door: OCI registry mirror routes, upstream resolution, auth passthrough."""
