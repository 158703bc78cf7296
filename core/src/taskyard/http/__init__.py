"""The engine's HTTP surface: routing with auth and validation, errors, OpenAPI, endpoints."""
