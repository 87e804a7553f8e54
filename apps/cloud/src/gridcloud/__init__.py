"""gridcloud: the cloud side of the gridedge stack."""
