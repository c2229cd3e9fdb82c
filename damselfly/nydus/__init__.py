"""nydus support: the RAFS v6 format, the converter, lazy mounts."""
