"""Run the installed ``da-train`` command as a user would (shared by the CLI tests)."""

import os
import shutil
import subprocess
import sys

# the installed console script when on PATH, else the same entry point through the module
EXE = [shutil.which("da-train")] if shutil.which("da-train") else [sys.executable, "-m",
                                                                   "da_train.cli"]


def da_train_env(extra=None):
    env = {**os.environ, **(extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def da_train(args, cwd, env_extra=None, timeout=300):
    return subprocess.run([*EXE, *args], cwd=cwd, env=da_train_env(env_extra),
                          capture_output=True, text=True, timeout=timeout)


def start_da_train(args, cwd):
    """Start da-train in the background (for signal tests)."""
    return subprocess.Popen([*EXE, *args], cwd=cwd, env=da_train_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def small(root, steps=20, method="dann"):
    return [f"method={method}", f"data.root={root}", "data.download=false",
            f"trainer.steps={steps}", "trainer.eval_every=10",
            "trainer.log_every=5", "trainer.batch_size=8", "trainer.embed_samples=16"]
