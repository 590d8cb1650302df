"""flwr-byz: Byzantine-robust, communication-efficient federated learning for Flower."""

__version__ = "0.1.0"
