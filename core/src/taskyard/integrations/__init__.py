"""The engine's own integration worker and the declarative (YAML) workflows it runs."""
