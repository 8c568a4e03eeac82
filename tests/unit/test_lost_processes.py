"""A training pod deleted or preempted mid-run: the exit codes that make the job restart and resume.

Seen on the test cluster: a Worker pod deleted mid-run (restartPolicy ExitCode) ended the whole
PyTorchJob as Failed. The Worker's torchrun, stopped by SIGTERM, exited 1 (permanent), and the
Master, whose collective lost its peer, exited 1 too. A signal is retryable (128 + N), and so is a
lost peer (200).
"""

from __future__ import annotations

import signal

import pytest

from kuberlhf import cli, torchrun
from kuberlhf.errors import EXIT_PERMANENT, EXIT_TRANSIENT, ConfigError
from kuberlhf.stages import registry

GLOO = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [10.88.0.25]:6029: "
        "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application.")


def test_torchrun_stopped_by_sigterm_exits_with_the_signals_code(monkeypatch, capsys):
    from torch.distributed.elastic.multiprocessing.api import SignalException

    def stopped(argv):
        raise SignalException(f"Process {1} got signal: {signal.SIGTERM}", sigval=signal.SIGTERM)

    monkeypatch.setattr("torch.distributed.run.main", stopped)
    assert torchrun.main(["--nproc_per_node=1", "-m", "kuberlhf.cli", "sft"]) == 143
    assert "stopped by SIGTERM; exiting 143" in capsys.readouterr().err


def _stage_raising(monkeypatch, err: BaseException) -> None:
    def run_stage(stage, config, overrides):
        raise err

    monkeypatch.setattr(registry, "run_stage", run_stage)


def test_a_stage_that_loses_its_peer_exits_retryable(monkeypatch, capsys):
    _stage_raising(monkeypatch, RuntimeError(GLOO))
    assert cli.main(["ppo", "--config", "configs/ppo/demo.yaml"]) == EXIT_TRANSIENT
    err = capsys.readouterr().err
    assert "another process of the run was lost" in err and "Connection reset by peer" in err


def test_a_dist_error_is_a_lost_peer_too(monkeypatch):
    import torch.distributed as dist

    _stage_raising(monkeypatch, dist.DistNetworkError("failed to recv, got 0 bytes"))
    assert cli.main(["ppo", "--config", "configs/ppo/demo.yaml"]) == EXIT_TRANSIENT


def test_other_errors_keep_their_meaning(monkeypatch):
    _stage_raising(monkeypatch, ConfigError("training.max_steps", "must be positive"))
    assert cli.main(["ppo", "--config", "configs/ppo/demo.yaml"]) == EXIT_PERMANENT
    _stage_raising(monkeypatch, RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes"):  # a bug: a traceback, never a retry
        cli.main(["ppo", "--config", "configs/ppo/demo.yaml"])


def test_a_save_is_begun_after_sigterm_only_when_the_grace_period_left_fits_it(monkeypatch):
    import signal

    from kuberlhf.distributed import GRACE_ENV, StopSignal

    monkeypatch.setenv(GRACE_ENV, "10")
    with StopSignal() as stop:
        assert stop.save_fits(60.0)  # no signal yet: nothing to fit into
        stop._handle(signal.SIGTERM, None)
        assert 9 < stop.left_s() <= 10
        assert stop.save_fits(None) and stop.save_fits(1.0)  # none saved yet; 1.5 x 1 s + 5 s fits in 10 s
        assert not stop.save_fits(4.0)  # 1.5 x 4 s + 5 s does not
        err = stop.stopped(7, saved=False, save_s=4.0)
        assert err.exit_code == 143 and "at step 7 without a checkpoint" in str(err) and "took 4 s" in str(err)
        assert "checkpoint-7 is sealed" in str(stop.stopped(7, saved=True))
    monkeypatch.delenv(GRACE_ENV)
    with StopSignal() as stop:  # outside a pod: no grace period known, always save
        stop._handle(signal.SIGTERM, None)
        assert stop.left_s() is None and stop.save_fits(1e6)
