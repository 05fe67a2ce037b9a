"""Developer tools: the fake provider, the benchmark's parts, small helpers.

Never shipped: the wheel packages ``app*`` only and the Docker image copies ``app/`` only. Tests
import it through pytest's ``pythonpath``; scripts run as ``python scripts/x.py`` through
``scripts/_repo_root.py``; ``python -m tools.fake_provider`` from the repository's root.
"""
