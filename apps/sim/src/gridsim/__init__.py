"""gridsim: a radio module with simulated meters behind a serial port."""
