"""Errors the user can act on. The CLI prints them as one line and exits non-zero."""


class FactoryError(Exception):
    """A problem with input, configuration or stored data; the message names the file and the problem."""


class BadInputError(FactoryError):
    """An input file (image, report, label table, volume, shard, manifest) cannot be used."""

    def __init__(self, source: str, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")

    def __reduce__(self):  # rebuilt from (source, problem) when it crosses a process boundary (Ray)
        return type(self), (self.source, self.problem)


class StorageError(BadInputError):
    """A storage location cannot be reached or written: a missing bucket, refused credentials, a closed
    endpoint, a path that cannot be a folder."""


class IntegrityError(BadInputError):
    """Stored bytes do not match what their manifest or sidecar promises."""
