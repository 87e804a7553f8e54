"""gridwire: the sans-IO edge-to-cloud protocol."""
