"""The one exception type users see.

A `UserError` is bad input or a bad environment that the user can fix: its message is one line that
names the file, field or value and says what would fix it. The CLI prints it without a traceback and
exits with status 2. Anything else escaping is a bug in dist-forget.
"""


class UserError(Exception):
    """Bad input the user can fix; the message is one line naming the culprit and the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
