"""The lab's one error type: a message for the user, shown without a traceback."""


class LabError(Exception):
    pass
