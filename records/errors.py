"""The one error bad input raises, wherever it is checked, and how its message shows a value."""

import re


class ValidationFailed(ValueError):
    """Bad input: the message names the field and the rule it breaks."""

    def __init__(self, field: str, rule: str):
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")


# Most of a value shown in a rule's message (the CMS's reason column, logs, the launch dialog).
SHOWN_MAX = 80
# What no valid name, label or reference holds and a credential often does: a URL's user or
# scheme, a key=value pair (a DSN, a connection string, a SAS token), the word itself.
MAY_HOLD_A_CREDENTIAL = re.compile(r"@|://|=|password|secret", re.IGNORECASE)


def shown(value: object) -> str:
    """`value` as a rule's message quotes it: repr'd (so a newline cannot forge a log line), cut at
    SHOWN_MAX characters, and not at all when it may hold a credential (a value a rule refuses may
    be anything a user pasted)."""
    text = value if isinstance(value, str) else repr(value)
    if MAY_HOLD_A_CREDENTIAL.search(text):
        return f"(a value of {len(text)} characters, not shown: it may hold a credential)"
    if len(text) > SHOWN_MAX:
        return f"{text[:SHOWN_MAX]!r}... ({len(text)} characters)"
    return repr(value)
