"""Every operation the HTTP layer and plugins call. A service never reads an actor's state: it
asks the actor (`tell`, `ask`) or reads what is committed in Postgres through a repository.

- `facade`: `Services`, the parts below composed, as handlers and plugins reach them.
- `directory`: the actors the services ask, created on first use.
- `runs`, `workflows`, `events`, `rate_limits`, `workers`: the operations on each.
- `history`: reads of what is committed. `schedules`, `tokens`, `alerts`: crons and one-off
  schedules, API tokens, alert rules.
"""

from taskyard.services.facade import Services

__all__ = ["Services"]
