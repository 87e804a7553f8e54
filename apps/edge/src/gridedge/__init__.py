"""gridedge: the grid edge unit application."""
