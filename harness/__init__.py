"""What the tests and the benchmarks both drive: real relays, coordinators, agents and labs.

Not a test module (pytest collects nothing here) and not part of the package (pyproject's
setuptools discovery includes only fleet): tests/ and bench/ import it, fleet/ never does.
"""
