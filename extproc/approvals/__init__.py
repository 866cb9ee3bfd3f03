"""Just-in-time human approval: the pure model (``model``), the Redis store (``store``), the gate
that holds a request (``gate``), webhooks (``notify``), the admin gRPC API (``api``) and the CLI."""
