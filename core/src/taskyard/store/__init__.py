"""The only code that talks to Postgres: connections, migrations, the write-behind persister
and its batch, and one repository module per noun."""
