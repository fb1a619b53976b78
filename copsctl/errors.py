"""The one exception type for bad input.

Library functions raise :class:`InputError` (a :class:`ValueError`) whose message is a
single line naming the offending input and the rule it breaks. The CLI turns it into a
one-line message on stderr and exit code 2, without a traceback.
"""


class InputError(ValueError):
    """Bad input: a one-line message naming the input and the rule it breaks."""
