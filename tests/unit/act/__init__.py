"""Unit tests of the act stage."""
