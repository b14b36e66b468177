"""Everything about a detection model: formats, pre/post-processing, precision, runtimes.

No HTTP and no asyncio here: the service imports this package, never the other way round.
"""
