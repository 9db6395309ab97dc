"""The embedded stack behind `make dev` and the tests. Nothing in production imports it."""
