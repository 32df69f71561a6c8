"""Features built on sessions: pipelines, verification, templates, the memory bridge, quotas and metering."""
