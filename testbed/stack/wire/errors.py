"""The one error every codec raises on malformed input."""


class ParseError(ValueError):
    """Malformed input: too short, bad length field, bad checksum, unsupported version.

    Callers count and drop; nothing else may escape a parser.
    """
