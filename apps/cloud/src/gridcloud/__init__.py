"""gridcloud: the cloud side of the gridedge stack.

Tests: tests/cloud/, tests/system/.
"""
