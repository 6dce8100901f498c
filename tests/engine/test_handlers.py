from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.engines import Evaluator, SupervisedTrainer

from scripts.engine.handlers import CaseTimer, GradientClipping, ValidationHandler


def _trainer(max_norm: float | None, scale: float) -> tuple[SupervisedTrainer, nn.Module]:
    torch.manual_seed(0)
    network = nn.Linear(4, 1)
    data = [{"image": torch.randn(8, 4) * scale, "label": torch.randn(8, 1) * scale}]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.0),
        loss_function=nn.MSELoss(),
        train_handlers=[GradientClipping(max_norm)] if max_norm else None,
    )
    return trainer, network


def _gradient_norm(network: nn.Module) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in network.parameters()])).item()


def test_clips_large_gradients_to_max_norm():
    trainer, network = _trainer(None, scale=100.0)
    trainer.run()
    assert _gradient_norm(network) > 12.0  # the case really needs clipping
    trainer, network = _trainer(12.0, scale=100.0)
    trainer.run()
    assert _gradient_norm(network) == pytest.approx(12.0, rel=1e-4)


def test_leaves_small_gradients_alone():
    reference, reference_net = _trainer(None, scale=0.01)
    reference.run()
    trainer, network = _trainer(12.0, scale=0.01)
    trainer.run()
    assert _gradient_norm(network) == pytest.approx(_gradient_norm(reference_net))


def test_rejects_non_positive_norm():
    with pytest.raises(ValueError, match="max_norm"):
        GradientClipping(0.0)


def test_case_timer_logs_each_case_with_its_name_and_the_time_left(caplog):
    cases = [{"image": MetaTensor(torch.zeros(1), meta={"filename_or_obj": f"/data/img{i}.nii.gz"})} for i in range(3)]
    engine = Engine(lambda e, batch: [batch])  # a decollated output, as MONAI's evaluators give
    CaseTimer().attach(engine)
    with caplog.at_level(logging.INFO, logger="CaseTimer"):
        engine.run(cases)
    lines = [r.getMessage() for r in caplog.records if r.name == "CaseTimer"]
    assert [line.split(":")[0] for line in lines] == ["[1/3] img0.nii.gz", "[2/3] img1.nii.gz", "[3/3] img2.nii.gz"]
    assert "min left" in lines[0] and "min left" not in lines[2]


@pytest.mark.parametrize("max_epochs, expected", [(5, [2, 4, 5]), (4, [2, 4]), (1, [1])])
def test_validation_also_runs_after_the_last_epoch_the_interval_skipped(max_epochs, expected):
    validated = []

    class Validator(Evaluator):
        def run(self, global_epoch: int = 1) -> None:
            validated.append(global_epoch)

    trainer = Engine(lambda e, batch: None)
    validator = Validator(device=torch.device("cpu"), val_data_loader=[0])
    ValidationHandler(validator=validator, interval=2, epoch_level=True).attach(trainer)
    trainer.run([0], max_epochs=max_epochs)
    assert validated == expected
