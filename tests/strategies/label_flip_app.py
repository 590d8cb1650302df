"""The standard app's ClientApp with the one line a data attack needs: LabelFlip.

Identical to ``standard_app.client_app.train`` except that the labels are flipped when
``label_flip_requested`` says this node is a LabelFlip node (ByzantineGrid or byzantine_mod).
"""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.utils.data import DataLoader, TensorDataset

from flwr_byz.attacks import LabelFlip
from flwr_byz.clients import label_flip_requested

from .standard_app.task import Net, load_data
from .standard_app.task import train as train_fn

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train on local data, with flipped labels on a LabelFlip node."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    trainloader, _ = load_data(
        context.node_config["partition-id"], context.node_config["num-partitions"]
    )
    if label_flip_requested(msg, context):
        x, y = trainloader.dataset.tensors
        flipped = TensorDataset(x, LabelFlip(num_classes=10)(y))
        trainloader = DataLoader(flipped, batch_size=trainloader.batch_size, shuffle=True)
    loss = train_fn(
        model, trainloader, 1, msg.content["config"].get("lr", 0.1), torch.device("cpu")
    )
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(trainloader.dataset)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)
