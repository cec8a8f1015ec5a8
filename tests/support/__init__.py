"""Test support: real processes and servers the tests start and control."""
