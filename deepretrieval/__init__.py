"""deepretrieval: reinforcement learning for query generation against real search backends."""

__version__ = "0.1.0"
