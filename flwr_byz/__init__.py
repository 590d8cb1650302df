"""flwr-byz: Byzantine-robust, communication-efficient federated learning for Flower."""

#: The version (``flwr-byz --version``, the wheel, CHANGELOG.md's newest heading).
#: ``[project].version`` in pyproject.toml repeats it literally, because Flower reads that
#: file as the Flower App's manifest and refuses a dynamic version; tests/test_version.py
#: fails when the two (or the installed metadata, or the CHANGELOG) differ.
__version__ = "0.2.0"
