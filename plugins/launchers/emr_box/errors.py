"""The one error a box that cannot start raises: its message is the line the user sees."""


class BoxError(RuntimeError):
    pass
