"""The error every alerting command reports in one line."""


class AlertingConfigError(ValueError):
    """A setting or option that cannot produce a working alerting file."""
