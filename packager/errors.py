"""The packager's own exception: one sentence for the user, naming the file or flag."""


class PackError(Exception):
    """A build, inspect or verify that cannot go on; the message is shown as is."""
