"""Fake upstream servers speaking real provider protocols, for tests."""
