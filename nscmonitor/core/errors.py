"""Named errors that cross module boundaries."""


class UserFacingError(Exception):
    """An error whose message is the whole story for the user: printed without a traceback."""


class ConfigError(UserFacingError):
    """The configuration is invalid; the message names the bad key."""
