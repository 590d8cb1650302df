"""Backdoor attacks (flwr_byz.attacks.backdoor): triggers and poisoning against brute-force
loops, DBA's split, model replacement's boost and clipping, Neurotoxin's mask and projected
training, the spec round trip and the method check."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from flwr_byz.attacks import (
    ATTACKS,
    DBA,
    BadNets,
    ModelReplacement,
    Neurotoxin,
    attack_spec,
    backdoor_test_set,
    check_attack_method,
    get_attack,
    is_backdoor,
)
from flwr_byz.attacks.backdoor import Backdoor, neurotoxin_mask, trigger_mask
from flwr_byz.simulations.training import gradient_masks, train_epochs

BACKDOORS = ("badnets", "dba", "model-replacement", "neurotoxin")


def brute_mask(shape: tuple[int, ...], size: int) -> torch.Tensor:
    """The trigger's positions by definition, one coordinate at a time."""
    mask = torch.zeros(shape, dtype=torch.bool)
    flat = mask.view(-1)
    for i in range(flat.numel()):
        coords = []
        rest = i
        for dim in reversed(shape):
            coords.append(rest % dim)
            rest //= dim
        coords.reverse()
        if len(shape) <= 2:  # flat inputs [d] and signals [C, L]: the last positions
            flat[i] = coords[-1] >= shape[-1] - size
        else:
            h, w = coords[-2], coords[-1]
            flat[i] = h >= shape[-2] - size and w >= shape[-1] - size
    return mask


@pytest.mark.parametrize(
    ("shape", "size", "default"),
    [((64,), 3, 8), ((10,), 1, 1), ((1, 40), 3, 5), ((3, 12, 10), 2, 2), ((1, 28, 28), 4, 3)],
)
def test_trigger_mask_is_the_corner(shape: tuple[int, ...], size: int, default: int) -> None:
    assert torch.equal(trigger_mask(shape, size), brute_mask(shape, size))
    assert torch.equal(trigger_mask(shape), brute_mask(shape, default))


def test_a_run_whose_backdoor_cannot_fit_the_data_is_refused_before_round_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """runner.prepare checks the target against the classes and the trigger against the
    inputs (digits: 10 classes, 64 features, a trigger of 8), and warns when DBA has more
    parts than attackers."""
    from flwr_byz.simulations.config import ExperimentConfig
    from flwr_byz.simulations.runner import prepare

    base = {"method": "fedavg", "dataset": "digits", "clients": 10, "byzantine": 2, "rounds": 1}
    bad = {
        "badnets:target=10": "target must be a class below 10",
        "dba:parts=100": "8 positions, fewer than parts=100",
        "badnets:size=100": r"size must be in \[1, 64\]",
        "badnets:start=-1": "start must be a round number >= 0",
    }
    for spec, match in bad.items():
        with pytest.raises(ValueError, match=match):
            prepare(ExperimentConfig(**base, attack=spec))
    BadNets(target=9).check_data((64,), 10)
    with caplog.at_level("WARNING"):
        prepare(ExperimentConfig(**base, attack="dba:parts=4"))
    assert "2 Byzantine client(s) for 4 trigger parts" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        prepare(ExperimentConfig(**base, attack="dba:parts=2"))
    assert "trigger parts" not in caplog.text


def test_trigger_mask_errors() -> None:
    with pytest.raises(ValueError, match="size must be in"):
        trigger_mask((5,), 6)
    with pytest.raises(ValueError, match="size must be in"):
        trigger_mask((3, 4, 4), 5)
    with pytest.raises(ValueError, match="at least one axis"):
        trigger_mask(())


@pytest.mark.parametrize("shape", [(20,), (2, 6, 5)])
def test_stamp_sets_the_reference_99th_percentile_on_the_trigger(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    reference = torch.randn(30, *shape, generator=gen)
    x = torch.randn(7, *shape, generator=gen)
    attack = BadNets(size=2)
    out = attack.stamp(x, reference)
    mask = brute_mask(shape, 2).view(-1)
    ref, xs, os = reference.view(30, -1), x.view(7, -1), out.view(7, -1)
    values = sorted(float(v) for v in ref.flatten())  # numpy's "linear" quantile, by hand
    pos = 0.99 * (len(values) - 1)
    lo = int(pos)
    bright = values[lo] + (pos - lo) * (values[lo + 1] - values[lo])
    for i in range(7):
        for j in range(mask.numel()):
            want = bright if mask[j] else float(xs[i, j])
            assert float(os[i, j]) == pytest.approx(want, rel=1e-5)  # float32 quantile
    assert not torch.equal(out, x) and out.dtype == x.dtype
    fixed = BadNets(size=2, value=9.0).stamp(x, reference)
    assert torch.equal(fixed.view(7, -1)[:, mask], torch.full((7, int(mask.sum())), 9.0))


def test_stamp_keeps_token_dtype() -> None:
    reference = torch.randint(0, 50, (40, 16), dtype=torch.uint8)
    x = torch.randint(0, 50, (3, 16), dtype=torch.uint8)
    out = BadNets().stamp(x, reference)
    assert out.dtype == torch.uint8
    bright = int(float(np.quantile(reference.numpy().astype(np.float64), 0.99)))
    assert torch.equal(out[:, -2:], torch.full((3, 2), bright, dtype=torch.uint8))
    assert torch.equal(out[:, :-2], x[:, :-2])


def test_backdoor_test_set_drops_the_target_class() -> None:
    x = torch.arange(40.0).view(10, 4)
    y = torch.tensor([0, 1, 2, 1, 0, 3, 1, 2, 2, 0])
    attack = BadNets(target=1, size=1)
    xs, ys = backdoor_test_set(attack, x, y, x)
    keep = [i for i in range(10) if int(y[i]) != 1]
    assert torch.equal(ys, torch.ones(len(keep), dtype=y.dtype))
    for row, i in enumerate(keep):
        bright = float(np.quantile(x.numpy(), 0.99))
        assert torch.equal(xs[row, :3], x[i, :3]) and float(xs[row, 3]) == pytest.approx(bright)
    with pytest.raises(ValueError, match="rows"):
        backdoor_test_set(attack, x, y[:3], x)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 1.0])
def test_poison_changes_the_seeded_fraction(fraction: float) -> None:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(25, 12, generator=gen), torch.randint(1, 5, (25,), generator=gen)
    attack = BadNets(target=0, fraction=fraction, size=3, seed=4)
    px, py = attack.poison(x, y, x, node=2, server_round=3)
    changed = (py != y).nonzero().squeeze(1)  # y >= 1: every poisoned row is relabelled
    assert len(changed) == round(fraction * 25)
    assert torch.equal(changed, attack.poisoned_rows(25, node=2, server_round=3))
    assert torch.equal(px[changed], attack.stamp(x[changed], x))
    others = torch.ones(25, dtype=torch.bool)
    others[changed] = False
    assert torch.equal(px[others], x[others]) and torch.equal(py[others], y[others])
    again = attack.poison(x, y, x, node=2, server_round=3)
    assert torch.equal(again[0], px) and torch.equal(again[1], py)


def test_poison_waits_for_the_start_round() -> None:
    x, y = torch.randn(10, 8), torch.arange(10) % 3 + 1
    attack = BadNets(start=3, fraction=1.0)
    assert not attack.active(2) and attack.active(3) and attack.active(4)
    early = attack.poison(x, y, x, server_round=2)
    assert torch.equal(early[0], x) and torch.equal(early[1], y)
    late = attack.poison(x, y, x, server_round=3)
    assert torch.equal(late[1], torch.zeros_like(y))


def test_poisoned_rows_depend_on_seed_node_and_round() -> None:
    rows = {
        (s, n, r): tuple(BadNets(seed=s).poisoned_rows(40, node=n, server_round=r).tolist())
        for s in (0, 1)
        for n in (0, 1)
        for r in (1, 2)
    }
    assert len(set(rows.values())) == len(rows)


def test_dba_parts_cover_the_global_trigger() -> None:
    for shape, size, parts in [((64,), 8, 4), ((1, 8, 8), 3, 4), ((3, 10, 10), 2, 3)]:
        attack = DBA(size=size, parts=parts)
        locals_ = [attack.local_mask(shape, node) for node in range(parts)]
        union = torch.stack(locals_).sum(0)
        assert torch.equal(union, attack.mask(shape).to(union.dtype))  # disjoint, covering
        assert all(bool(m.any()) for m in locals_)
        assert torch.equal(attack.local_mask(shape, parts + 1), locals_[1])  # node mod parts
        pinned = DBA(size=size, parts=parts, part=2)
        assert torch.equal(pinned.local_mask(shape, 0), locals_[2 % parts])
    with pytest.raises(ValueError, match="fewer than parts"):
        DBA(size=2, parts=4).local_mask((16,), 0)


def test_dba_poisons_with_the_local_trigger_and_tests_with_the_global_one() -> None:
    x = torch.zeros(10, 16)
    reference = torch.ones(4, 16)
    attack = DBA(size=4, parts=2, fraction=1.0)
    px, _ = attack.poison(x, torch.ones(10, dtype=torch.long), reference, node=1)
    assert torch.equal(px.sum(0), torch.tensor([0.0] * 14 + [10.0, 10.0]))
    assert torch.equal(attack.stamp(x, reference).sum(0), torch.tensor([0.0] * 12 + [10.0] * 4))


def test_model_replacement_boost_and_clip() -> None:
    gen = torch.Generator().manual_seed(2)
    own = torch.randn(3, 50, generator=gen)
    attack = ModelReplacement(eta=0.5)
    assert attack.scale_for(10) == 20.0
    assert attack.scale_for(10, attackers=4) == 5.0
    boosted = attack.for_round(10)
    assert torch.equal(boosted(own[:0], own), own * 20.0)
    assert ModelReplacement(boost=3.0).scale_for(100, attackers=7) == 3.0  # the spec wins
    clipped = ModelReplacement(boost=4.0, norm=2.5)(own[:0], own)
    for i in range(3):
        scaled = own[i] * 4.0
        n = math.sqrt(sum(float(v) ** 2 for v in scaled))
        want = scaled * min(1.0, 2.5 / n)
        torch.testing.assert_close(clipped[i], want)
    small = ModelReplacement(boost=1.0, norm=1e6)(own[:0], own)
    assert torch.equal(small, own)
    with pytest.raises(ValueError, match="set boost="):
        ModelReplacement()(own[:0], own)
    with pytest.raises(ValueError, match="norm must be > 0"):
        ModelReplacement(norm=0)


def brute_top(values: list[float], k: int) -> set[int]:
    order = sorted(range(len(values)), key=lambda i: -abs(values[i]))
    return set(order[:k])


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5])
def test_neurotoxin_mask_drops_the_top_coordinates(ratio: float) -> None:
    g = torch.randn(6, 7, generator=torch.Generator().manual_seed(3))
    mask = neurotoxin_mask(g, ratio)
    k = math.ceil(ratio * 42)
    dropped = set((~mask).view(-1).nonzero().squeeze(1).tolist())
    assert dropped == brute_top(g.view(-1).tolist(), k)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def test_neurotoxin_training_stays_off_the_top_coordinates() -> None:
    torch.manual_seed(0)
    net = Net()
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(40, 6, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    masks = gradient_masks(net, x, y, ratio=0.2, weight_decay=0.01)
    flat_grad = torch.cat(
        [g.view(-1) for g in torch.autograd.grad(_loss(net, x, y, 0.01), net.parameters())]
    )
    flat_mask = torch.cat([m.view(-1) for m in masks])
    assert torch.equal(flat_mask, neurotoxin_mask(flat_grad, 0.2))
    before = [p.detach().clone() for p in net.parameters()]
    kw = {"epochs": 2, "batch_size": 8, "lr": 0.5, "seed": 1, "momentum": 0.9}
    train_epochs(net, x, y, weight_decay=0.01, grad_mask=masks, **kw)
    moved = torch.cat(
        [(p.detach() - b).view(-1) for p, b in zip(net.parameters(), before, strict=True)]
    )
    assert bool((moved[~flat_mask] == 0).all()) and bool((moved[flat_mask] != 0).any())
    # an all-True mask is plain SGD (weight decay folded into the gradient: the same steps)
    a, b = Net(), Net()
    b.load_state_dict(a.state_dict())
    train_epochs(a, x, y, weight_decay=0.01, **kw)
    ones = [torch.ones_like(p, dtype=torch.bool) for p in b.parameters()]
    train_epochs(b, x, y, weight_decay=0.01, grad_mask=ones, **kw)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="grad_mask has"):
        train_epochs(copy.deepcopy(a), x, y, grad_mask=ones[:1], **kw)


def _loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, wd: float) -> torch.Tensor:
    loss = nn.functional.cross_entropy(net(x), y)
    return loss + 0.5 * wd * sum(p.pow(2).sum() for p in net.parameters())


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_spec_round_trips(name: str) -> None:
    attack = get_attack(name, seed=11)
    assert get_attack(attack_spec(attack)) == attack
    assert is_backdoor(attack) == (name in BACKDOORS)
    if name in BACKDOORS:
        assert isinstance(attack, Backdoor) and attack.backdoor


def test_backdoor_specs() -> None:
    assert get_attack("badnets:target=3,fraction=0.25,size=2") == BadNets(3, 0.25, 2)
    assert get_attack("dba:parts=2", seed=5) == DBA(parts=2, seed=5)
    assert get_attack("model-replacement:boost=10,norm=5") == ModelReplacement(boost=10, norm=5)
    assert get_attack("neurotoxin:ratio=0.05") == Neurotoxin(ratio=0.05)
    assert type(get_attack("constrain-and-scale")) is ModelReplacement
    for bad, match in [
        ("badnets:fraction=2", "fraction"),
        ("badnets:target=-1", "target"),
        ("dba:parts=0", "parts"),
        ("neurotoxin:ratio=1", "ratio"),
        ("model-replacement:boost=-1", "boost"),
    ]:
        with pytest.raises(ValueError, match=match):
            get_attack(bad)


def test_method_check() -> None:
    for spec in ("model-replacement", "neurotoxin"):
        check_attack_method(get_attack(spec), "fedavg", fedavg_like=True)
        with pytest.raises(ValueError, match=r"FedAvg-like local training.*robust-momentum"):
            check_attack_method(get_attack(spec), "robust-momentum", fedavg_like=False)
    for spec in ("badnets", "dba", "label-flip", "alie"):
        check_attack_method(get_attack(spec), "robust-momentum", fedavg_like=False)


def test_bright_value_is_cached_per_tensor_and_recomputed_after_a_change() -> None:
    """A poisoning node reads the trigger value every round: it is computed once per
    reference tensor, and again when that tensor changes in place or another one is given."""
    from flwr_byz.attacks import backdoor as bd

    reference = torch.arange(1000, dtype=torch.float32).reshape(100, 10)
    first = bd.bright_value(reference)
    assert float(first) == pytest.approx(float(np.quantile(reference.numpy(), 0.99)))
    first.add_(1.0)  # the caller's copy: the cache keeps its own
    assert float(bd.bright_value(reference)) == pytest.approx(989.01)
    reference.mul_(2.0)  # in place: the version counter moves, the value follows
    assert float(bd.bright_value(reference)) == pytest.approx(2 * 989.01)
    assert float(bd.bright_value(reference, q=0.5)) == pytest.approx(2 * 499.5)
    other = torch.zeros(100, 10)
    assert float(bd.bright_value(other)) == 0.0
