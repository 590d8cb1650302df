"""A standard Flower PyTorch app, as ``flwr new`` generates it, adapted to offline data.

Used unchanged by the drop-in tests: nothing in it knows about flwr-byz.
"""
