"""Named errors that cross module boundaries."""


class UserFacingError(Exception):
    """An error whose message is the whole story for the user: printed without a traceback."""


class ConfigError(UserFacingError):
    """The configuration is invalid; the message names the bad key."""


#: the start of the reason recorded for a file that could not be opened (locked by the
#: instrument, permissions): the decoder writes it and the store finds such images by it, to
#: give them another chance when they can be read
UNREADABLE = "file is locked or not readable"
