"""gridedge: the grid edge unit application.

Tests: tests/edge/, tests/radio/, tests/system/.
"""
