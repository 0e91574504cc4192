"""Tests of `engine/sampling/`."""
