"""The one exception type for bad input: raised before any data is read or model built."""


class ConfigError(ValueError):
    """A configuration, data or checkpoint problem, with a message naming the valid choices."""


class RatioNotTaken(ConfigError):
    """A ratio given to a scheme that takes none: an error for one run; in a sweep, the baseline runs once."""
