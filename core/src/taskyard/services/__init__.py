"""Every operation the HTTP layer and plugins call. A service never reads an actor's state: it
asks the actor (`tell`, `ask`) or reads what is committed in Postgres through a repository.

- `runs`: the actor directory and the operations on runs, workflows, events and rate limits.
- `schedules`: crons and one-off schedules.
"""

from taskyard.services.runs import Services

__all__ = ["Services"]
