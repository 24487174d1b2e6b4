"""Errors of the plugin: user-fit messages that Scipion shows as the protocol's error, without a traceback."""
from pyworkflow.exceptions import PyworkflowException


class PupickPluginError(PyworkflowException):
    """Base of the plugin's errors (Scipion logs a PyworkflowException as one line, not a traceback)."""


class ConvertError(PupickPluginError):
    """Input that cannot be exchanged with pupick (names that do not match, unreadable table...)."""


class PupickRunError(PupickPluginError):
    """The pupick command could not be started or exited with a failure."""
