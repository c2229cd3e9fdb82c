"""Helpers only the tests use (fakes, a token-auth server, file-tree snapshots); shared ones are in ``testkit``."""
