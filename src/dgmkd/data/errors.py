"""The one error type of the data readers."""


class DataFormatError(ValueError):
    """A data file is missing, truncated or not in the expected format."""
