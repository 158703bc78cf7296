"""Pure rules: runs and their options, retries, flow control, labels, rate-limit windows,
dispatch, DAGs, workflows, durable waits, crons, expressions. No asyncio, no asyncpg: every
function here can be called, and tested, without an event loop or a database."""
