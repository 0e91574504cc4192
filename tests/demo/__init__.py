"""Tests of `engine/demo/`."""
