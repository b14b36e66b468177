"""Execution backends behind one ``Engine`` protocol (see ``base.py``)."""
