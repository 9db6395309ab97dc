"""Point-in-time recovery (docs/pitr.md): the domain owns its assets, jobs, schedules, sensors and
checks; `definitions.py` composes it with the others through `pitr_definitions(settings)`."""
