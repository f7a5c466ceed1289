"""One run over several processes (tladapt.distributed): DDP with the gloo backend on the CPU.

The multi-process tests start 2 real processes (``torch.multiprocessing`` with torchrun's
environment variables, or ``torchrun`` itself) and compare what they trained with one process
on the same global batch, and an interrupted-then-resumed DDP run with the uninterrupted one.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tladapt import distributed
from tladapt.config import load_config
from tladapt.data.pipeline import IndexStream
from tladapt.errors import ConfigError, RunInterrupted
from tladapt.experiment import prepare, resume_runs, run_experiment
from tladapt.runs import find_run_dirs, read_status

# A model without dropout (backbone and discriminator), per-sample-mean losses (cross-entropy,
# DANN's domain BCE), an odd-sized target (dslr: 157 samples, so the evaluation shards differ).
BASE = [
    "data.dataset='office_caltech10_surf'", "data.tasks=['webcam->dslr']", "model.hidden=[32]",
    "model.dropout=0.0", "plugins.dann.hidden=[16]", "plugins.dann.dropout=0.0", "trainer.progress=false",
    "trainer.eval_every=4", "trainer.log_every=2", "trainer.checkpoint_every=4", "trainer.threads=1",
    "validation.validators=['entropy', 'im']",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(runs: Path, *overrides: str):
    return load_config(None, [*BASE, f"experiment.runs_dir='{runs}'", *overrides], enable=["dann"])


def _worker(rank: int, world: int, port: int, runs: str, overrides: list[str], mode: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from tladapt.trainer import Trainer

    try:
        if mode == "resume":
            resume_runs(runs)
            return
        if mode == "stop":  # only rank 1 is signalled, after step 3: the ranks agree at the flush after step 4
            original = Trainer.advance

            def advance(self):
                original(self)
                if self.steps_done == 3 and rank == 1:
                    signal.raise_signal(signal.SIGINT)

            Trainer.advance = advance
            try:
                run_experiment(make_config(Path(runs), *overrides))
            except RunInterrupted as stop:
                assert stop.step == 4, stop.step
                return
            raise AssertionError("the run was not interrupted")
        run_experiment(make_config(Path(runs), *overrides))
    finally:
        distributed.shutdown()


def spawn(world: int, runs: Path, overrides: list[str], mode: str = "run", timeout: float = 300) -> None:
    """Run ``_worker`` in ``world`` fresh processes; fail (and kill them) after ``timeout`` seconds."""
    ctx = mp.start_processes(_worker, args=(world, free_port(), str(runs), overrides, mode), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed workers ({mode}) did not finish in {timeout} s")


def final_state(runs: Path) -> tuple[dict, dict, Path]:
    [run_dir] = find_run_dirs(runs)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    return ckpt, json.loads((run_dir / "results.json").read_text()), run_dir


# ------------------------------------------------------------------ in one process
@pytest.mark.parametrize("replacement", [False, True])
def test_sharded_streams_together_draw_the_global_batch(replacement):
    n, b, world = 23, 3, 2  # 23 // 6 = 3 batches per epoch, a different remainder dropped each epoch
    single = IndexStream(n, b * world, torch.Generator().manual_seed(5), replacement)
    ranks = [IndexStream(n, b, torch.Generator().manual_seed(5), replacement, shard=(r, world)) for r in range(world)]
    for _ in range(10):  # across several epochs
        whole = single.next()
        parts = [s.next() for s in ranks]
        assert all(p.shape == (b,) for p in parts)
        assert torch.equal(torch.cat(parts), whole)
    state = ranks[1].state_dict()
    assert state["epoch"].shape[1] == b * world or replacement


def test_a_sharded_batch_larger_than_the_domain_names_the_processes():
    with pytest.raises(ValueError, match=r"trainer.batch_size=8 x 2 processes = 16 exceeds the domain's 10 samples"):
        IndexStream(10, 8, torch.Generator(), shard=(0, 2))


def test_context_from_torchrun_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.context() == distributed.Context() and not distributed.context().active
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    ctx = distributed.context()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.local_world_size, ctx.main) == (3, 4, 1, 2, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="expected 0 <= RANK < WORLD_SIZE"):
        distributed.context()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="environment variable RANK='x': expected an integer"):
        distributed.context()


def test_what_torchrun_cannot_run_is_refused_before_any_run(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"trainer.batch_runs = 0 under torchrun.*set trainer.batch_runs = 1"):
        prepare(make_config(tmp_path / "runs", "trainer.batch_runs=0"))
    assert not (tmp_path / "runs").exists()


def test_a_checkpoint_resumes_only_with_its_number_of_processes(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    one = {"rng": "r0", "pipeline": "p0"}
    assert distributed.rank_checkpoint(one, "ckpt") is one
    two = {**one, "ranks": [{"rng": "a"}, {"rng": "b"}]}
    with pytest.raises(ConfigError, match=r"ckpt was written by a run over 2 process\(es\); this one has 1: "
                                          r"resume it with torchrun --nproc_per_node 2"):
        distributed.rank_checkpoint(two, "ckpt")
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    assert distributed.rank_checkpoint(two, "ckpt") == {"rng": "b", "pipeline": "p0", "ranks": two["ranks"]}
    with pytest.raises(ConfigError, match=r"over 1 process\(es\); this one has 2: resume it with one process"):
        distributed.rank_checkpoint(one, "ckpt")


# ------------------------------------------------------------------ two processes (gloo)
def _strip(results: dict) -> dict:
    if isinstance(results, dict):
        return {k: _strip(v) for k, v in results.items() if "seconds" not in k and k not in ("run_dir", "provenance")}
    if isinstance(results, list):
        return [_strip(v) for v in results]
    return results


@pytest.mark.slow
def test_an_interrupted_ddp_run_resumes_to_the_uninterrupted_one(tmp_path):
    overrides = ["trainer.steps=8", "trainer.batch_size=8", "model.dropout=0.3"]  # per-rank dropout streams too
    spawn(2, tmp_path / "whole", overrides)
    spawn(2, tmp_path / "cut", overrides, mode="stop")
    [run_dir] = find_run_dirs(tmp_path / "cut")
    status = read_status(run_dir)
    assert (status.state, status.step) == ("interrupted", 4)
    assert len(torch.load(run_dir / "checkpoint.pt", weights_only=True)["ranks"]) == 2
    # resuming with one process is refused before any work, naming the number of processes
    with pytest.raises(ConfigError, match=r"over 2 process\(es\); this one has 1: resume it with torchrun "
                                          r"--nproc_per_node 2"):
        resume_runs(run_dir)
    assert read_status(run_dir).state == "interrupted"
    spawn(2, tmp_path / "cut", [], mode="resume")
    whole_ckpt, whole, _ = final_state(tmp_path / "whole")
    cut_ckpt, cut, _ = final_state(tmp_path / "cut")
    for name, value in whole_ckpt["modules"].items():
        assert torch.equal(cut_ckpt["modules"][name], value), name
    assert _strip(cut) == _strip(whole)


@pytest.mark.slow
def test_torchrun_trains_on_two_processes_what_one_process_trains_on_the_global_batch(tmp_path):
    """``torchrun --nproc_per_node 2 -m tladapt run CONFIG`` with batch 8 per process gives the
    parameters of one process with batch 16 (float tolerance), and evaluates on the whole target."""
    config = tmp_path / "ddp.toml"
    config.write_text("[plugins.dann]\nhidden = [16]\ndropout = 0.0\n")
    steps = ["trainer.steps=8"]
    sets = [s for s in BASE if not s.startswith("plugins.")] + [
        *steps, "trainer.batch_size=8", f"experiment.runs_dir='{tmp_path / 'ddp'}'"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "tladapt", "run", str(config)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 0 alone prints the table and the run directory
    assert proc.stdout.count("webcam->dslr") == 1 and proc.stdout.count("webcam_to_dslr") == 1

    [single] = run_experiment(make_config(tmp_path / "one", *steps, "trainer.batch_size=16"))
    ddp_ckpt, ddp, run_dir = final_state(tmp_path / "ddp")
    one_ckpt, _, _ = final_state(tmp_path / "one")
    assert ddp["distributed"] == {"world_size": 2, "local_world_size": 2, "global_batch_size": 16}
    assert ddp_ckpt["step"] == 8 and len(ddp_ckpt["ranks"]) == 2
    for name, value in one_ckpt["modules"].items():  # the same parameters, up to summation order
        torch.testing.assert_close(ddp_ckpt["modules"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    # not trivially: one process on one rank's batch size trains other parameters
    run_experiment(make_config(tmp_path / "half", *steps, "trainer.batch_size=8"))
    half = final_state(tmp_path / "half")[0]["modules"]
    assert max((half[k] - v).abs().max().item() for k, v in ddp_ckpt["modules"].items()) > 1e-3
    from tladapt.api import load_run
    from tladapt.data.tasks import load_task

    trained = load_run(run_dir)
    _, target = load_task(trained.config.data, "webcam->dslr")
    with torch.no_grad():
        acc = 100.0 * (target.map(trained.model).argmax(1) == target.y).float().mean().item()
    # the gathered evaluation covers every target sample once: the recorded accuracy is the one of
    # the trained model on the whole target, computed here in one process
    assert ddp["final"]["oracle/target_acc"] == pytest.approx(acc, abs=1e-9)
    assert ddp["final"]["oracle/target_acc"] == pytest.approx(single["final"]["oracle/target_acc"], abs=100 / 157)
    # files from rank 0 only: one event file, a finished status of rank 0's process
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert read_status(run_dir).state == "finished"
