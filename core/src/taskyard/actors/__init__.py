"""The actor runtime and every actor: each owns one piece of state (a queue, a tenant's
workflows, the schedules, the connected workers, ...) and changes it only inside its mailbox.
Helpers an actor owns never call back into it."""
