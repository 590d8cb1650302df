"""``python -m flwr_byz ...``: the same command line as ``flwr-byz ...``."""

from flwr_byz.cli import app

if __name__ == "__main__":
    app(prog_name="flwr-byz")
