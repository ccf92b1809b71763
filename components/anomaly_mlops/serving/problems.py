"""The error both servers answer 400 for, raised wherever a request is found wrong."""


class InputProblem(ValueError):
    """A request the servers refuse with 400 (kserve's InvalidInput), saying what is wrong."""
