"""`pack`: builds, inspects and verifies llamapyz files."""
