"""The one error bad input raises, wherever it is checked."""


class ValidationFailed(ValueError):
    """Bad input: the message names the field and the rule it breaks."""

    def __init__(self, field: str, rule: str):
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")
