"""Errors the testbed reports to its user: each carries a message that says what to change."""


class TestbedError(Exception):
    """Base of every error the testbed raises on purpose; the CLI prints it without a trace."""

    __test__ = False  # not a pytest test class, despite the name


class ParameterError(TestbedError, ValueError):
    """A scenario, topology or link parameter is invalid; raised before anything is created."""


class EnvironmentProblem(TestbedError):
    """The machine lacks something the run needs (root, a tool, a kernel feature)."""


class BackendUnsupported(TestbedError):
    """A shaping backend was asked for something it cannot apply (never silently ignored)."""
