"""The one exception type that reaches a user as a message, never as a traceback."""


class UserError(ValueError):
  """Bad input from the user: the message names the problem and the fix."""
