"""Helpers shared by the tests (synthetic checkpoints, hand-written architectures, a loopback HTTP server)."""
