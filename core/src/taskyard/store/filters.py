"""The WHERE clause of a listing (runs, stored events): the filters a request gives, each value a
numbered parameter, and a page of the newest rows before a cursor."""

from __future__ import annotations

import uuid
from datetime import datetime


class Filters:
    """Filters of one tenant's rows, added one by one; `page` ends the query."""

    def __init__(self, tenant_id: uuid.UUID) -> None:
        self.clauses = ["tenant_id = $1"]
        self.args: list[object] = [tenant_id]

    def add(self, clause: str, value: object) -> None:
        """`clause` with `{}` where the value's parameter goes."""
        self.args.append(value)
        self.clauses.append(clause.format(f"${len(self.args)}"))

    def any_of(self, column: str, values: list[str]) -> None:
        if values:
            self.add(f"{column} = ANY({{}}::text[])", values)

    def metadata(self, metadata: dict[str, str]) -> None:
        """Rows whose metadata holds all of these pairs."""
        if metadata:
            self.add("metadata @> {}::jsonb", metadata)

    def created(self, since: datetime | None, until: datetime | None) -> None:
        """Rows created in [since, until)."""
        if since is not None:
            self.add("created_at >= {}", since)
        if until is not None:
            self.add("created_at < {}", until)

    def page(
        self, select: str, key: str, before: uuid.UUID | None, limit: int
    ) -> tuple[str, list[object]]:
        """`select` ("SELECT ... FROM table") filtered, newest first by `key`, after `before`
        (the last key of the previous page): the query and its arguments."""
        if before is not None:
            self.add(f"{key} < {{}}", before)
        self.args.append(limit)
        query = (
            f"{select} WHERE {' AND '.join(self.clauses)} "
            f"ORDER BY {key} DESC LIMIT ${len(self.args)}"
        )
        return query, self.args
