"""gridsim: a radio module with simulated meters behind a serial port.

Modules: ``model`` (meters and their load), ``module`` (the radio module,
sans-IO), ``truth`` (the ground-truth file and its reader ``GroundTruth``),
``serialpty`` (the pseudo-terminal), ``cli`` (the ``gridsim`` command).
docs/radio.md describes the protocol and the command line.

Tests: tests/sim/, tests/radio/test_end_to_end.py, tests/radio/test_restarts.py.
"""
